"""``niches``: natural niches (M2N2, Abrantes et al. 2025), steady state (docs/DESIGN.md, "Strategies").

An archive of P members (default 20) starts as P zero rows whose per-item scores are all false.
Every told candidate goes through the same update: with loads z_j = sum_k s_kj over archive + child
(z_j = 0 → 1), fitness f_i = sum_j s_ij / z_j^alpha, and the member at the argmin over archive + child
(first index on ties — a child tying the worst member replaces it) is replaced by the child, unless the
child itself is the argmin. An item solved by few members is worth much, so the archive keeps members
that are good at different things (niches) instead of P copies of the best all-rounder.

A child: parent A ~ f_i / sum f (loads over the archive); with attraction, parent B ~ g(A, ·) / sum g
where g(A, B) = sum_j max(s_Bj/z_j^alpha − s_Aj/z_j^alpha, 0) (B is strong where A is weak), without
it B ~ f / sum f like A; then split-point crossover (split uniform over the genes, mix ~ U(0, 1); genes
before the split mix·A + (1 − mix)·B, after it (1 − mix)·A + mix·B; linear, or SLERP with one angle
from the whole vectors), then Gaussian mutation clipped to the box. With ``alpha: 0`` and
``use_attraction: false`` this is the plain GA of the paper's comparison.

Fallbacks the reference code does not need: when every archive member has fitness 0, A is uniform
over the filled slots; when no member is stronger than A anywhere (sum g = 0), B ~ f / sum f.
A failed candidate never enters the archive.

The first candidates are the ``initial`` points (the seeds), plus ``random_init`` uniform points; the
strategy returns None until all of them are told, and from then on never waits: each child is bred
from the archive as it stands after the tells so far. It needs ``Evaluation.per_item`` (the
calibration items' scores in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.strategies import operators as ops
from evomerge.strategies.base import Candidate, Evaluation, Strategy, as_point


@dataclass(frozen=True)
class NichesOptions:
    archive_size: int = field(default=20, metadata={"ge": 2})  # P, members kept
    # load exponent: 1 = natural niches, 0 = plain fitness (the GA comparison)
    alpha: float = field(default=1.0, metadata={"ge": 0})
    use_attraction: bool = True  # pick the second parent by attraction (False = both by fitness)
    mix: Literal["linear", "slerp"] = "linear"  # crossover mixing on genes (SLERP: angle from the whole vectors)
    slerp_origin: float = 0.0  # the box coordinate SLERP treats as the origin (the box image of a zero weight)
    # std of the Gaussian mutation in box units (0 = none, as the M2N2 reference with pre-trained seeds); 0.01
    # moves a [0, 2] weight by ~0.02: crossover alone never leaves the range the seeds span per gene, a little
    # noise lets the search step just past it
    mutation_sigma: float = field(default=0.01, metadata={"ge": 0})
    mutation_rate: float = field(default=1.0, metadata={"ge": 0, "le": 1})  # probability that a gene is mutated
    # uniform points added to the seeds; None = archive_size without initial points, else 0
    random_init: int | None = field(default=None, metadata={"ge": 0})


class NaturalNiches(Strategy):
    name = "niches"
    Options = NichesOptions
    needs_items = True

    def _setup(self) -> None:
        o = self.options
        n_random = o.random_init if o.random_init is not None else (0 if self.initial else o.archive_size)
        if not self.initial and n_random == 0:
            raise EvomergeError("strategy 'niches' needs seed points: give initial points or set option 'random_init' "
                                ">= 1")
        init_rng = self._rng(0)
        self._seeds = [*self.initial, *(as_point(init_rng.random(self.dim)) for _ in range(n_random))]
        self._rng_breed = self._rng(1)
        self.archive = np.zeros((o.archive_size, self.dim))
        self.archive_index = np.full(o.archive_size, -1, dtype=np.int64)  # ask index of each member; -1 = empty
        self.scores: np.ndarray | None = None  # (P, items), known from the first successful tell
        self._seeds_asked = 0
        self._children = 0

    # --- ask ---------------------------------------------------------------------------------

    def _ask(self) -> Candidate | None:
        if self._seeds_asked < len(self._seeds):
            x = self._seeds[self._seeds_asked]
            self._seeds_asked += 1
            return Candidate(x=x, operator="init" if self._seeds_asked <= len(self.initial) else "random", generation=0)
        if self.n_told < len(self._seeds):
            return None  # the archive exists once every seed is told
        return self._breed()

    def _breed(self) -> Candidate:
        o, rng = self.options, self._rng_breed
        filled = [int(i) for i in np.flatnonzero(self.archive_index >= 0)]
        if filled:
            s = self._scores()
            fitness = ops.niche_fitness(s, o.alpha)
            a = ops.proportional(rng, fitness, fallback=filled)
            pull = ops.attraction(s, a, o.alpha) if o.use_attraction else np.zeros(len(fitness))
            b = ops.proportional(rng, pull) if pull.sum() > 0 else ops.proportional(rng, fitness, fallback=filled)
            xa, xb = self.archive[a], self.archive[b]
            parents = (int(self.archive_index[a]), int(self.archive_index[b]))
        else:  # every seed failed: breed from the seeds themselves
            i, j = (int(k) for k in rng.integers(0, len(self._seeds), size=2))
            xa, xb = np.asarray(self._seeds[i]), np.asarray(self._seeds[j])
            parents = (i, j)
        split, mix = ops.draw_split(rng, self.dim)
        child = ops.split_point_crossover(xa, xb, split, mix, method=o.mix, origin=o.slerp_origin)
        operator = "crossover"
        if o.mutation_sigma > 0 and o.mutation_rate > 0:
            child = ops.gaussian_mutation(rng, child, o.mutation_sigma, o.mutation_rate)
            operator = "crossover+mutation"
        generation = 1 + self._children // o.archive_size
        self._children += 1
        return Candidate(x=as_point(child), parents=parents, operator=operator, generation=generation)

    # --- tell --------------------------------------------------------------------------------

    def _tell(self, index: int, candidate: Candidate, evaluation: Evaluation) -> None:
        if evaluation.failed:
            return
        items = np.asarray(evaluation.per_item, dtype=float)
        if items.size == 0:
            raise EvomergeError(
                "strategy 'niches' needs per-item scores (Evaluation.per_item); the scorer returned none"
            )
        if self.scores is None:
            self.scores = np.zeros((self.options.archive_size, items.size))
        elif items.size != self.scores.shape[1]:
            raise ValueError(f"strategy 'niches': got {items.size} per-item scores, earlier candidates had "
                             f"{self.scores.shape[1]}")
        slot = ops.niche_replacement(self.scores, items, self.options.alpha)
        if slot is None:
            return
        self.scores[slot] = items
        self.archive[slot] = candidate.x
        self.archive_index[slot] = index

    def _scores(self) -> np.ndarray:
        assert self.scores is not None
        return self.scores

    # --- inspection --------------------------------------------------------------------------

    def members(self) -> list[tuple[int, tuple[float, ...], tuple[float, ...]]]:
        """The archive's filled slots as (ask index, x, per-item scores), in slot order."""
        if self.scores is None:
            return []
        return [
            (int(self.archive_index[i]), tuple(float(v) for v in self.archive[i]),
             tuple(float(v) for v in self.scores[i]))
            for i in np.flatnonzero(self.archive_index >= 0)
        ]
