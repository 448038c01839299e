"""``cmaes``: CMA-ES from the ``cma`` package on the unit box (docs/DESIGN.md, "Strategies").

``cma.CMAEvolutionStrategy(x0, sigma0, {'bounds': [0, 1], 'seed': s, 'popsize': λ, 'verbose': -9})``
minimizing the negative scalarized fitness (the weighted mean of the oriented objectives). The
``initial`` points are evaluated first (generation 0) but not told to CMA-ES: its generations contain
only its own samples. Its x0 is the best initial point once all are told (the box centre without
any), so a search started at the fixed recipes continues from the best of them. ``ask`` hands out one
generation's members one by one and returns None at the generation edge until all are told.

Restarts: when ``cma``'s own stop criteria fire (a flat fitness — common when accuracy ties —, a tiny
step size, no progress), a fresh CMA-ES starts at the best point found so far with σ0 and, by default,
twice the population (IPOP), its seed drawn from the strategy's seed and the restart count.

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

from evomerge.strategies.base import Candidate, Evaluation, Selection, Strategy, as_point


@dataclass(frozen=True)
class CMAESOptions:
    # initial step size in box units (a third of the box is ~2 sigma)
    sigma0: float = field(default=1.0 / 6.0, metadata={"gt": 0})
    popsize: int | None = field(default=None, metadata={"ge": 2})  # lambda; None = 4 + floor(3 ln dim)
    restart_popsize_factor: float = field(default=2.0, metadata={"ge": 1})  # population growth per restart (IPOP)


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
        self.popsize = self.options.popsize or default_popsize(self.dim)
        self._rng_state = PrivateGlobalRNG()
        self.es: Any = None  # built once the initial points are told
        self.restarts = 0
        self._best: tuple[float, tuple[float, ...]] = (math.inf, (0.5,) * self.dim)  # (minimized value, x)
        self._solutions: list[np.ndarray] = []  # the current generation as cma returned it
        self._handed = 0  # members of the current generation asked so far
        self._values: list[float] = []  # their fitness (minimized), in order
        self._generation = 0

    def _start(self, x0: tuple[float, ...], popsize: int) -> None:
        """A fresh CMA-ES at ``x0``; its seed depends only on the strategy's seed and the restart count."""
        import cma

        seed = int(np.random.SeedSequence([self.seed, 1, self.restarts]).generate_state(1)[0] % (2**31 - 2)) + 1
        opts = {"bounds": [0.0, 1.0], "seed": seed, "popsize": popsize, "verbose": -9, "verb_log": 0, "verb_disp": 0}
        with self._rng_state.active(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.es = cma.CMAEvolutionStrategy(list(x0), self.options.sigma0, opts)

    def _ask(self) -> Candidate | None:
        first = self._next_initial()
        if first is not None:
            return first
        if self.es is None:
            if self.n_told < len(self.initial):
                return None  # x0 is the best initial point: tell them all first
            self._start(self._best[1], self.popsize)
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

    def selection(self, candidate: Candidate) -> Selection | None:
        """A CMA-ES generation's λ members, of which its recombination keeps the best μ (the initial points are
        told one by one, outside any generation, and need their full scores)."""
        if candidate.operator != "cma":
            return None
        return Selection(candidate.generation, len(self._solutions), int(self.es.sp.weights.mu))

    def _tell(self, index: int, candidate: Candidate, evaluation: Evaluation) -> None:
        value = self.scalarize(evaluation)
        minimized = -value if math.isfinite(value) and not evaluation.failed else math.inf
        if minimized < self._best[0]:
            self._best = (minimized, candidate.x)
        if index < len(self.initial):
            return
        self._values.append(minimized)
        if len(self._values) == len(self._solutions):
            finite = [v for v in self._values if math.isfinite(v)]
            worst = (max(finite) + 1.0) if finite else 0.0  # cma needs finite values: rank failures last
            values = [v if math.isfinite(v) else worst for v in self._values]
            with self._rng_state.active(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.es.tell(self._solutions, values)
                stop = dict(self.es.stop())
            if stop:
                self._restart()

    def _restart(self) -> None:
        """cma says this run is done (flat fitness, tiny steps, no progress): start afresh at the best point."""
        self.restarts += 1
        self._start(self._best[1], int(round(self.es.popsize * self.options.restart_popsize_factor)))
        self._solutions, self._handed, self._values = [], 0, []
