"""Search strategies: ask/tell optimizers over the unit box ``[0, 1]^dim`` (docs/DESIGN.md, "Strategies").

They never see tensors or models: they propose :class:`Candidate` points and are told
:class:`Evaluation` score vectors. Registered names:

- ``random``  — uniform points (the baseline);
- ``cmaes``   — CMA-ES from the ``cma`` package, on the scalarized objective;
- ``niches``  — natural niches (M2N2), steady state, on per-item scores;
- ``nsga2``   — NSGA-II over the objective vector;
- ``optuna``  — optuna's TPE, NSGA-II or CMA-ES samplers.

``make_strategy(name, dim, n_objectives, seed=..., weights=..., initial=..., storage=..., **options)`` builds one;
``strategy_options(name)`` lists its options with their defaults (the config's ``strategy.options``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from evomerge.errors import EvomergeError
from evomerge.strategies.base import Candidate, Evaluation, Selection, Strategy
from evomerge.strategies.cmaes import CMAES
from evomerge.strategies.niches import NaturalNiches
from evomerge.strategies.nsga2 import NSGA2
from evomerge.strategies.optuna_search import OptunaSearch
from evomerge.strategies.random_search import RandomSearch

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (CMAES, NaturalNiches, NSGA2, OptunaSearch, RandomSearch)
}


def strategy_names() -> list[str]:
    """The registered strategy names, sorted."""
    return sorted(STRATEGIES)


def strategy_class(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise EvomergeError(f"unknown strategy '{name}' (known: {', '.join(strategy_names())})") from None


def racing_strategies() -> list[str]:
    """The strategies that can race (``scoring.fidelity: racing``): those that describe their selection."""
    return sorted(name for name, cls in STRATEGIES.items() if cls.selection is not Strategy.selection)


def strategy_options(name: str) -> dict[str, Any]:
    """The options of strategy ``name`` with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(strategy_class(name).Options)}


def make_strategy(name: str, dim: int, n_objectives: int, **keywords: Any) -> Strategy:
    """Build the strategy registered as ``name`` (``keywords``: ``Strategy``'s — seed, weights, initial, storage —
    and the strategy's options); unknown names or options raise EvomergeError."""
    return strategy_class(name)(dim, n_objectives, **keywords)


__all__ = [
    "Candidate", "Evaluation", "Selection", "Strategy", "STRATEGIES", "make_strategy", "racing_strategies",
    "strategy_names", "strategy_options", "strategy_class", "CMAES", "NaturalNiches", "NSGA2", "OptunaSearch",
    "RandomSearch",
]
