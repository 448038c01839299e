"""A family's ceiling: what per-layer × per-expert task-arithmetic weights reach when they are chosen on
the held-out items themselves.

No search is allowed to see held-out data, so this is not a result anyone can claim. It shows how
high per-layer weights can go on held-out, where a search scored on calibration can hardly do better,
and condition (c) asks exactly that: that the family leaves room beyond the best fixed recipe.

It is a search as ``evomerge search`` runs one, on held-out: the genome (``genome.GenomeSpace``: one
weight gene in [0, 2] per layer group and expert, task arithmetic at λ 1) decodes unit-box points to
recipes, the ``cmaes`` strategy (``strategies.make_strategy``) asks and is told, the family's Worker merges
and scores (``zoo.check.FamilyScorer``), and a candidate's value is its mean normalized held-out score
(``scoring.normalize``, by the best expert alone). It starts at the best fixed task-arithmetic recipe (every
weight = its λ) and keeps the best candidate it scores.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from evomerge.errors import EvomergeError
from evomerge.genome.space import GenomeSpace
from evomerge.recipes.fixed import source_name
from evomerge.scoring.normalize import Normalizer
from evomerge.sources.folder import read_config, read_tensor_names
from evomerge.sources.layers import layer_groups, num_layers
from evomerge.strategies import Evaluation, make_strategy
from evomerge.zoo.check import FamilyScorer, ModelFamily

WEIGHT_BOUNDS = (0.0, 2.0)
SIGMA0 = 0.15  # CMA-ES's initial step in unit-box units: 0.3 in weight units, three steps of the λ grid
STRATEGY = "cmaes"

Point = tuple[float, ...]


def ceiling_space(family: ModelFamily, layer_granularity: int = 1) -> GenomeSpace:
    """Per layer group (``sources.layers``: embed, layers.<i>, final_norm) and expert, one task-arithmetic weight."""
    names = read_tensor_names(family.base)
    groups = layer_groups(names, num_layers(read_config(family.base), names), layer_granularity)
    return GenomeSpace(groups, base=family.base, sources=family.sources, methods=["task_arithmetic"],
                       bounds={"weight": WEIGHT_BOUNDS}, parameters={"lambda": 1.0},
                       layer_granularity=layer_granularity, seed=family.seed)


def maximize(value: Callable[[Point], float], dim: int, start: Point, evaluations: int, seed: int,
             log: Callable[[str], None] = lambda line: None) -> list[tuple[Point, float]]:
    """Every point the ``cmaes`` strategy asks (``start`` first) with its value, ``evaluations`` of them; each
    is told before the next ask, so the strategy never waits. A non-finite value is told as a failure."""
    strategy = make_strategy(STRATEGY, dim, 1, seed=seed, initial=[start], sigma0=SIGMA0)
    history: list[tuple[Point, float]] = []
    best = -math.inf
    for _ in range(evaluations):
        candidate = strategy.ask()
        assert candidate is not None  # every earlier candidate is told: no generation is left waiting
        v = value(candidate.x)
        strategy.tell(candidate, Evaluation((v,), failed=not math.isfinite(v)))
        history.append((candidate.x, v))
        if v > best:
            best = v
            log(f"ceiling: {len(history)} evaluations, best {best:.4f}")
    return history


def search_ceiling(family: ModelFamily, start_lambda: float, evaluations: int, seed: int, *, layer_granularity: int = 1,
                   log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Best mean normalized held-out score found within ``evaluations`` candidates (the start included), its
    weights (layer group -> skill -> weight), and the start's score."""
    if evaluations < 1:
        raise EvomergeError(f"a ceiling search needs at least 1 evaluation (the start), got {evaluations}")
    scorer = FamilyScorer(family)
    singles = family.recipes()
    sources = [scorer.fixed(singles[source_name(i)][0], "heldout") for i in range(len(family.experts))]
    assert scorer.higher is not None  # set by the experts' evaluations
    normalizer = Normalizer.from_sources(scorer.higher, {"heldout": sources})
    space = ceiling_space(family, layer_granularity)

    def value(x: Sequence[float]) -> float:
        return normalizer.mean(scorer.raw(space.to_recipe(x), "heldout")[0], "heldout")

    start = space.encode(weight=[start_lambda] * len(family.experts))
    history = maximize(value, space.dim, start, evaluations, seed, log)
    best_x, best = max(history, key=lambda h: h[1] if math.isfinite(h[1]) else -math.inf)  # ties: the first
    specs = space.decode(best_x)
    weights = {unit: {s: round(w, 4) for s, w in zip(family.skills, spec.source_params["weight"], strict=True)}
               for unit, spec in specs.items()}
    return {"heldout": round(best, 4), "start": round(history[0][1], 4), "start_lambda": start_lambda,
            "evaluations": len(history), "seed": seed, "weights": weights}
