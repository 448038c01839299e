"""Generalized task arithmetic: every task-vector method is one body with a family.

θ = θ0 + λ · combine(sparsify(τ_k)), τ_k = θ_k − θ0. The family says which entries of each τ_k
survive and whether signs are elected (see ``sparsify.combine``):

| method            | sparsify       | consensus | normalize | survivors                                         |
|-------------------|----------------|-----------|-----------|---------------------------------------------------|
| task_arithmetic   | none           | no        | no        | all                                               |
| ties              | magnitude      | sign      | yes       | the max(1, int(d·n)) largest |τ_k|                |
| dare_linear       | random         | no        | no        | u < d, rescaled by 1/d                            |
| dare_ties         | random         | sign      | no        | u < d, rescaled by 1/d                            |
| breadcrumbs       | outliers       | no        | no        | int(d·n) after dropping the int(γ·n) largest      |
| breadcrumbs_ties  | outliers       | sign      | no        | as breadcrumbs                                    |
| della             | ranked_random  | sign      | yes       | u < p_i, p rising d−ε … d+ε with rank in its row; /p_i |
| della_linear      | ranked_random  | no        | no        | as della                                          |

Defaults follow mergekit's methods of the same names. Where evomerge differs on purpose: DARE and
DELLA rescale survivors by 1/p (the papers' rule, unbiased) where mergekit keeps each τ_k's L1 norm;
the keep decision is u < p with common random draws u (a pure function of seed, tensor and source),
not a fresh Bernoulli draw; DELLA lets d ± ε leave (0, 1) (p ≤ 0 drops, p ≥ 1 keeps, unscaled); γ and
ε are one value for all sources. d ≥ 1 keeps τ_k whole in every family.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.methods.params import DENSITY, EPSILON, GAMMA, LAMBDA, WEIGHT, normalize
from evomerge.merge.registry import Family, MergeMethod, Param, register
from evomerge.merge.sparsify import (
    combine,
    della_probabilities,
    drop_and_rescale,
    magnitude_mask,
    outlier_mask,
    task_vectors,
)


def generalized_task_arithmetic(
    base: Tensor, sources: Sequence[Tensor], *, family: Family, weight: Sequence[float],
    density: Sequence[float] | None = None, draws: Sequence[Tensor] | None = None,
    lam: float = 1.0, normalize: bool = False, gamma: float = 0.01, epsilon: float = 0.15,
) -> Tensor:
    """θ0 + λ Σ w_k m_k τ̂_k (/ Σ w_k m_k when normalizing), with the family's masks and sign election."""
    tau = task_vectors(base, sources)
    if family.sparsify != "none":
        assert density is not None
        tau = torch.stack([
            sparsified(family, t, float(d), None if draws is None else draws[k], gamma, epsilon)
            for k, (t, d) in enumerate(zip(tau, density, strict=True))
        ])
    return combine(base, tau, weight, consensus=family.consensus, normalize=normalize, lam=lam)


def sparsified(family: Family, tau: Tensor, density: float, draws: Tensor | None, gamma: float,
               epsilon: float) -> Tensor:
    """One task vector with the family's survivors kept (and rescaled, for random drops)."""
    if family.sparsify == "magnitude":
        return tau * magnitude_mask(tau, density)
    if family.sparsify == "outliers":
        return tau * outlier_mask(tau, density, gamma)
    if density >= 1:
        return tau
    assert draws is not None, "random sparsification needs draws"
    if family.sparsify == "random":
        return drop_and_rescale(tau, draws, density)
    return drop_and_rescale(tau, draws, della_probabilities(tau, density, epsilon))


def _declare(name: str, sparsify: str, consensus: bool, normalize_default: bool, extra: tuple[Param, ...],
             doc: str) -> None:
    family = Family(sparsify, consensus)  # type: ignore[arg-type]
    sparse = (DENSITY,) if sparsify != "none" else ()
    register(MergeMethod(
        name=name, fn=functools.partial(generalized_task_arithmetic, family=family, normalize=normalize_default),
        params=(WEIGHT, *sparse, LAMBDA, normalize(normalize_default), *extra), family=family, doc=doc,
    ))


for _args in (
    ("task_arithmetic", "none", False, False, (), "Add the weighted task vectors to the base."),
    ("ties", "magnitude", True, True, (),
     "Trim each τ_k to its largest magnitudes, elect signs, average the agreeing entries."),
    ("dare_linear", "random", False, False, (), "Drop entries of each τ_k at random, rescale survivors, add."),
    ("dare_ties", "random", True, False, (), "DARE drops with TIES sign election."),
    ("breadcrumbs", "outliers", False, False, (GAMMA,), "Drop the largest and the smallest entries of each τ_k, add."),
    ("breadcrumbs_ties", "outliers", True, False, (GAMMA,), "Breadcrumbs trimming with TIES sign election."),
    ("della", "ranked_random", True, True, (EPSILON,), "Magnitude-ranked random drops with TIES sign election."),
    ("della_linear", "ranked_random", False, False, (EPSILON,), "Magnitude-ranked random drops, added."),
):
    _declare(*_args)
