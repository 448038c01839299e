"""``nsga2``: NSGA-II (Deb et al. 2002) over the objective vector, generational.

Generation 0 is the ``initial`` points, filled up with uniform points to ``population`` members (more
when there are more initial points). Each later generation is ``population`` children: parents by
binary tournament on (Pareto rank, crowding distance), SBX crossover, then polynomial or Gaussian
mutation, all clipped to the box. Survival is elitist (mu + lambda): parents and children together,
whole fronts in order, the last front cut by crowding distance. ``ask`` hands out one generation's
members one by one and returns None at the generation edge until all are told. With ``scoring.fidelity:
racing`` the driver races each generation of children against that survival (``selection``).

A failed candidate keeps the (worst) objective values the driver gives it and ranks accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from evomerge.pareto import non_dominated_sort
from evomerge.strategies import operators as ops
from evomerge.strategies.base import Candidate, Evaluation, Selection, Strategy, as_point


@dataclass(frozen=True)
class NSGA2Options:
    population: int = field(default=16, metadata={"ge": 2})  # N, members per generation and survivors kept
    # probability that a pair of parents is recombined (else copied)
    crossover_prob: float = field(default=0.9, metadata={"ge": 0, "le": 1})
    # SBX distribution index: larger = children nearer their parents
    eta_crossover: float = field(default=15.0, metadata={"ge": 0})
    mutation: Literal["polynomial", "gaussian"] = "polynomial"  # polynomial: Deb's
    eta_mutation: float = field(default=20.0, metadata={"ge": 0})  # polynomial mutation distribution index
    mutation_sigma: float = field(default=0.05, metadata={"ge": 0})  # Gaussian mutation std in box units
    # probability that a gene mutates; None = 1/dim
    mutation_rate: float | None = field(default=None, metadata={"ge": 0, "le": 1})


class NSGA2(Strategy):
    name = "nsga2"
    Options = NSGA2Options

    def _setup(self) -> None:
        self._rng_gen = self._rng(0)
        n0 = max(self.options.population, len(self.initial))
        first = [Candidate(x=x, operator="init", generation=0) for x in self.initial]
        first += [Candidate(x=as_point(self._rng_gen.random(self.dim)), operator="random", generation=0)
                  for _ in range(n0 - len(first))]
        self._batch: list[Candidate] = first  # the generation being handed out
        self._handed = 0
        self._generation = 0
        self.population: list[tuple[int, np.ndarray, np.ndarray]] = []  # survivors: (ask index, x, objectives)
        self._told: list[tuple[int, np.ndarray, np.ndarray]] = []  # members of the current batch told so far

    def _ask(self) -> Candidate | None:
        if self._handed == len(self._batch):
            if len(self._told) < len(self._batch):
                return None
            self._next_generation()
        candidate = self._batch[self._handed]
        self._handed += 1
        return candidate

    def selection(self, candidate: Candidate) -> Selection | None:
        """A generation of children: the survival that follows keeps ``population`` of them and the current
        survivors together (generation 0, the initial and random points, needs full scores)."""
        if candidate.generation == 0:
            return None
        return Selection(candidate.generation, len(self._batch), self.options.population, rule="pareto",
                         rivals=tuple(m[0] for m in self.population))

    def _tell(self, index: int, candidate: Candidate, evaluation: Evaluation) -> None:
        self._told.append((index, np.asarray(candidate.x), np.asarray(evaluation.objectives, dtype=float)))

    def _next_generation(self) -> None:
        o, rng = self.options, self._rng_gen
        pool = self.population + self._told
        self.population = [pool[i] for i in ops.nsga2_survival(_finite([m[2] for m in pool]), o.population)]
        quality = ops.crowded_quality(_finite([m[2] for m in self.population]))
        self._generation += 1
        children: list[Candidate] = []
        while len(children) < o.population:
            i, j = (int(k) for k in ops.tournament(rng, quality, 2, size=2))
            xa, xb = self.population[i][1], self.population[j][1]
            if rng.random() < o.crossover_prob:
                ca, cb = ops.sbx_crossover(rng, xa, xb, eta=o.eta_crossover)
                operator = "sbx"
            else:
                ca, cb = xa.copy(), xb.copy()
                operator = "copy"
            for c in (ca, cb):
                if o.mutation == "polynomial":
                    c = ops.polynomial_mutation(rng, c, eta=o.eta_mutation, rate=o.mutation_rate)
                else:
                    rate = 1.0 / self.dim if o.mutation_rate is None else o.mutation_rate
                    c = ops.gaussian_mutation(rng, c, o.mutation_sigma, rate)
                children.append(Candidate(x=as_point(c), parents=(self.population[i][0], self.population[j][0]),
                                          operator=f"{operator}+mutation", generation=self._generation))
        self._batch = children[: o.population]
        self._handed = 0
        self._told = []

    def front(self) -> list[tuple[int, tuple[float, ...], tuple[float, ...]]]:
        """The current population's non-dominated members as (ask index, x, objectives)."""
        if not self.population:
            return []
        f = np.array([m[2] for m in self.population])
        first = non_dominated_sort(f)[0]
        return [(self.population[i][0], tuple(map(float, self.population[i][1])), tuple(map(float, f[i])))
                for i in first]


def _finite(objectives: list[np.ndarray]) -> np.ndarray:
    """Objective rows with NaN/inf replaced by a very bad finite value, so they rank last."""
    f = np.array(objectives, dtype=float)
    return np.where(np.isfinite(f), f, -1e300)
