"""``cmaes``: CMA-ES from the ``cma`` package on the unit box (docs/DESIGN.md, "Strategies").

``cma.CMAEvolutionStrategy(x0, sigma0, {'bounds': [0, 1], 'seed': s, 'popsize': λ, 'verbose': -9})``
minimizing the negative scalarized fitness (the weighted mean of the oriented objectives). x0 is the
first ``initial`` point, or the box centre. The ``initial`` points are evaluated first (generation 0)
but not told to CMA-ES: its generations contain only its own samples. ``ask`` hands out one
generation's members one by one and returns None at the generation edge until all are told.

Randomness: ``cma`` draws from numpy's *global* RNG (it calls ``np.random.seed(seed)`` when it is
built and ``np.random.randn`` when it samples), so two instances in one process, or any other use of
``np.random``, would interleave their streams. Every call into ``cma`` therefore runs inside
:class:`PrivateGlobalRNG`, which swaps in this strategy's own global-RNG state and restores the
caller's state afterwards: the sequence depends only on the seed and the tells, and the caller's
``np.random`` stream is left untouched. (Not thread-safe: call a strategy from one thread.) ``cma``
treats seed 0 as "seed from the clock", so the seed passed to it is derived and never 0.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from evomerge.strategies.base import Candidate, Evaluation, Strategy, as_point


@dataclass(frozen=True)
class CMAESOptions:
    sigma0: float = field(default=1.0 / 6.0, metadata={"gt": 0})  # initial step size in box units (a third of the box is ~2 sigma)
    popsize: int | None = field(default=None, metadata={"ge": 2})  # lambda; None = 4 + floor(3 ln dim)


class PrivateGlobalRNG:
    """Runs code against a private copy of numpy's global RNG state (for libraries that use it)."""

    def __init__(self) -> None:
        self._state: Any = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = np.random.get_state()
        if self._state is not None:
            np.random.set_state(self._state)
        try:
            yield
        finally:
            self._state = np.random.get_state()
            np.random.set_state(outer)


def default_popsize(dim: int) -> int:
    return 4 + int(math.floor(3 * math.log(dim)))


class CMAES(Strategy):
    name = "cmaes"
    Options = CMAESOptions

    def _setup(self) -> None:
        import cma

        self.popsize = self.options.popsize or default_popsize(self.dim)
        x0 = list(self.initial[0]) if self.initial else [0.5] * self.dim
        cma_seed = int(np.random.SeedSequence([self.seed, 1]).generate_state(1)[0] % (2**31 - 2)) + 1
        opts = {"bounds": [0.0, 1.0], "seed": cma_seed, "popsize": self.popsize, "verbose": -9,
                "verb_log": 0, "verb_disp": 0}
        self._rng_state = PrivateGlobalRNG()
        with self._rng_state.active(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.es = cma.CMAEvolutionStrategy(x0, self.options.sigma0, opts)
        self._solutions: list[np.ndarray] = []  # the current generation as cma returned it
        self._handed = 0  # members of the current generation asked so far
        self._values: list[float] = []  # their fitness (minimized), in order
        self._generation = 0

    def _ask(self) -> Candidate | None:
        first = self._next_initial()
        if first is not None:
            return first
        if self._handed == len(self._solutions):
            if len(self._values) < len(self._solutions):
                return None  # generation edge: tell the pending members first
            with self._rng_state.active(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._solutions = self.es.ask()
            self._handed, self._values = 0, []
            self._generation += 1
        x = self._solutions[self._handed]
        self._handed += 1
        return Candidate(x=as_point(x), operator="cma", generation=self._generation)

    def _tell(self, index: int, candidate: Candidate, evaluation: Evaluation) -> None:
        if index < len(self.initial):
            return
        value = self.scalarize(evaluation)
        self._values.append(-value if math.isfinite(value) else math.inf)
        if len(self._values) == len(self._solutions):
            finite = [v for v in self._values if math.isfinite(v)]
            worst = (max(finite) + 1.0) if finite else 0.0  # cma needs finite values: rank failures last
            values = [v if math.isfinite(v) else worst for v in self._values]
            with self._rng_state.active(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.es.tell(self._solutions, values)
