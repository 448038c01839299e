"""The ask/tell protocol every search strategy implements, and what they share.

A strategy proposes points of the unit box ``[0, 1]^dim`` (:class:`Candidate`) and is told their
oriented score vectors (:class:`Evaluation`, higher is better). It never sees tensors or models.

Protocol (the driver in ``evomerge/run/search.py`` keeps it):

- ``ask()`` returns the next candidate, or ``None`` when the strategy must be told pending results
  first (a generational strategy at its generation edge). ``None`` is only ever returned while some
  asked candidate is still untold.
- ``tell(candidate, evaluation)`` is called exactly once per asked candidate, in ask order.
- Given its seed and the sequence of ask/tell calls, a strategy is deterministic: no wall clock, no
  global random state, no set/dict-order dependence. Candidate *i* is asked once results
  0 … i−L are told (L fixed by the config), which makes a run independent of the worker count.

Each strategy declares its options once, as a frozen dataclass ``Options`` whose fields carry the
defaults and constraints (they are the config's ``strategy.options``, read by the schema loader);
unknown options or bad values raise :class:`~evomerge.errors.EvomergeError` naming the field.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from evomerge.config.schema import load
from evomerge.errors import EvomergeError


@dataclass(frozen=True)
class Candidate:
    """A point the strategy proposes."""

    x: tuple[float, ...]  # in [0, 1]^dim
    parents: tuple[int, ...] = ()  # indices (ask order) of parent candidates, for lineage
    operator: str = ""  # e.g. "init", "cma", "crossover+mutation", "tpe"
    generation: int = 0


@dataclass(frozen=True)
class Evaluation:
    """What the strategy is told about a candidate."""

    objectives: tuple[float, ...]  # oriented: higher is better, one per objective
    per_item: tuple[float, ...] = ()  # per-item scores in [0, 1], all objectives' calibration items concatenated
    failed: bool = False  # failed candidates get worst values from the driver


@dataclass(frozen=True)
class Selection:
    """How a generational strategy selects from a candidate's generation of ``size`` members asked together;
    the driver may race them against it (docs/SCORING.md, "Cheap fitness"). ``rule`` "fitness": the best
    ``keep`` members by scalarized fitness (CMA-ES). "pareto": ``keep`` survivors of the members and the
    ``rivals`` together by non-dominated fronts, the last front cut by crowding (NSGA-II's elitist survival)."""

    generation: int
    size: int
    keep: int
    rule: Literal["fitness", "pareto"] = "fitness"
    rivals: tuple[int, ...] = ()  # ask indices of told candidates the members compete with (NSGA-II's parents)


@dataclass(frozen=True)
class NoOptions:
    """A strategy without options."""


class Strategy(ABC):
    """Base class: validates the common arguments and options, keeps the ask/tell bookkeeping.

    Subclasses implement :meth:`_setup` (their own state), :meth:`_ask` (return a Candidate or None)
    and :meth:`_tell` (receives the candidate's ask index). :meth:`_next_initial` serves the ``initial`` points, in
    order, as ``operator="init"``, ``generation=0`` candidates.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs_items: ClassVar[bool] = False  # reads Evaluation.per_item (the driver computes it only then)

    def __init__(
        self,
        dim: int,
        n_objectives: int,
        *,
        seed: int,
        weights: Sequence[float] | None = None,
        initial: Sequence[Sequence[float]] = (),
        storage: str | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise EvomergeError(f"strategy '{self.name}': the search space needs at least one gene, got dim={dim}")
        if not isinstance(n_objectives, (int, np.integer)) or n_objectives < 1:
            raise EvomergeError(f"strategy '{self.name}': needs at least one objective, got {n_objectives}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise EvomergeError(f"strategy '{self.name}': seed must be a non-negative integer, got {seed!r}")
        self.dim, self.n_objectives, self.seed = int(dim), int(n_objectives), int(seed)
        self.weights = _weights(weights, self.n_objectives, self.name)
        self.initial = tuple(_point(p, self.dim, f"strategy '{self.name}': initial point {i}")
                             for i, p in enumerate(initial))
        self.options: Any = load(self.Options, options, what="config", where="strategy.options")
        self.storage = storage  # where a strategy with external state (optuna's study) keeps it; the run provides it
        self._pending: deque[Candidate] = deque()  # asked, not yet told (only these: a long run asks 10k+ points)
        self._n_asked = 0
        self._n_told = 0
        self._n_initial_asked = 0
        self._setup()

    # --- the protocol ----------------------------------------------------------------------

    def ask(self) -> Candidate | None:
        """The next candidate to evaluate, or None: tell the pending results first."""
        candidate = self._ask()
        if candidate is None:
            if not self._pending:
                raise RuntimeError(f"strategy '{self.name}' asked for results while none are pending")
            return None
        self._pending.append(candidate)
        self._n_asked += 1
        return candidate

    def tell(self, candidate: Candidate, evaluation: Evaluation) -> None:
        """The result of the oldest untold candidate (tells come in ask order)."""
        index = self._n_told
        if not self._pending:
            raise RuntimeError(f"strategy '{self.name}': told a result but no candidate is pending")
        if tuple(candidate.x) != self._pending[0].x:
            raise RuntimeError(f"strategy '{self.name}': told candidate {index} out of ask order (its x differs)")
        if len(evaluation.objectives) != self.n_objectives:
            raise ValueError(
                f"strategy '{self.name}': expected {self.n_objectives} objective value(s), got "
                f"{len(evaluation.objectives)}"
            )
        self._n_told += 1
        self._tell(index, self._pending.popleft(), evaluation)

    @property
    def n_asked(self) -> int:
        return self._n_asked

    @property
    def n_told(self) -> int:
        return self._n_told

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    # --- for subclasses --------------------------------------------------------------------

    @abstractmethod
    def _setup(self) -> None:
        """Build the strategy's own state once the common arguments and options are checked."""

    @abstractmethod
    def _ask(self) -> Candidate | None: ...

    @abstractmethod
    def _tell(self, index: int, candidate: Candidate, evaluation: Evaluation) -> None: ...

    def _next_initial(self) -> Candidate | None:
        if self._n_initial_asked >= len(self.initial):
            return None
        x = self.initial[self._n_initial_asked]
        self._n_initial_asked += 1
        return Candidate(x=x, operator="init", generation=0)

    def selection(self, candidate: Candidate) -> Selection | None:
        """For the candidate just asked: its generation's selection, when the strategy needs only whether each
        member is selected and an estimate of its objectives; None (the default): it needs the full score. A
        strategy that overrides this can race (``scoring.fidelity: racing``; ``racing_strategies``)."""
        return None

    def scalarize(self, evaluation: Evaluation) -> float:
        """Weighted mean of the oriented objectives (higher is better); -inf when not finite."""
        value = float(np.dot(self.weights, evaluation.objectives))
        return value if math.isfinite(value) else -math.inf

    def _rng(self, *stream: int) -> np.random.Generator:
        """A private generator for one named stream of this strategy's randomness."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, *stream]))


def as_point(x: np.ndarray | Sequence[float]) -> tuple[float, ...]:
    """A plain tuple of Python floats, clipped to the box (what Candidate.x holds)."""
    return tuple(np.clip(np.asarray(x, dtype=float), 0.0, 1.0).tolist())  # tolist: ~4x faster than float() per gene


def _point(p: Sequence[float], dim: int, where: str) -> tuple[float, ...]:
    try:
        arr = np.asarray(p, dtype=float)
    except (TypeError, ValueError) as e:
        raise EvomergeError(f"{where} is not a list of numbers: {p!r}") from e
    if arr.shape != (dim,):
        raise EvomergeError(f"{where} has {arr.size} values, the search space has {dim} genes")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0.0) or np.any(arr > 1.0):
        raise EvomergeError(f"{where} lies outside the unit box [0, 1]^{dim}")
    return tuple(arr.tolist())


def _weights(weights: Sequence[float] | None, n: int, name: str) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise EvomergeError(
            f"strategy '{name}': objective weights must be {n} non-negative numbers with a positive sum, got "
            f"{list(weights)}"
        )
    return w / w.sum()
