"""Evolutionary operators: small pure functions over numpy arrays.

Every function that draws random numbers takes an explicit ``numpy.random.Generator`` as its first
argument and touches no other randomness, so a strategy is deterministic given its seed and the
order of its calls. Points live in the unit box ``[0, 1]^dim``; operators that can leave it clip
to ``low``/``high`` (default 0 and 1). Scores are oriented: higher is better.

- crossover: :func:`uniform_crossover`, :func:`blend_crossover` (BLX-alpha), :func:`sbx_crossover`,
  :func:`split_point_crossover` (M2N2, linear or SLERP mixing), :func:`slerp`;
- mutation: :func:`gaussian_mutation`, :func:`polynomial_mutation`;
- selection: :func:`tournament`, :func:`truncation`, :func:`nsga2_survival` (dominance
  and crowding from ``evomerge.pareto``), :func:`niche_fitness`, :func:`attraction`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from evomerge.pareto import crowding_distance, non_dominated_sort

Array = NDArray[np.float64]

# --- crossover ---------------------------------------------------------------------------------


def uniform_crossover(rng: np.random.Generator, a: ArrayLike, b: ArrayLike,
                      swap_prob: float = 0.5) -> tuple[Array, Array]:
    """Each gene is swapped between the two parents with probability ``swap_prob``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    swap = rng.random(a.shape) < swap_prob
    return np.where(swap, b, a), np.where(swap, a, b)


def blend_crossover(
    rng: np.random.Generator, a: ArrayLike, b: ArrayLike, alpha: float = 0.5, low: float = 0.0, high: float = 1.0
) -> Array:
    """BLX-alpha: each gene uniform in ``[min − alpha·d, max + alpha·d]`` with d = |a − b|, clipped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    d = hi - lo
    return np.clip(rng.uniform(lo - alpha * d, hi + alpha * d), low, high)


def sbx_crossover(
    rng: np.random.Generator, a: ArrayLike, b: ArrayLike, eta: float = 15.0, gene_prob: float = 0.5,
    low: float = 0.0, high: float = 1.0,
) -> tuple[Array, Array]:
    """Simulated binary crossover (Deb & Agrawal 1995), bounded variant (as in NSGA-II's code).

    Each gene takes part with probability ``gene_prob``; a larger ``eta`` keeps children nearer
    their parents. Genes whose parents (nearly) agree are copied. Children stay in ``[low, high]``.
    """
    x1, x2 = np.asarray(a, dtype=float).copy(), np.asarray(b, dtype=float).copy()
    n = x1.shape[0]
    u_gene, u_beta, u_swap = rng.random(n), rng.random(n), rng.random(n)
    for i in range(n):
        if u_gene[i] > gene_prob or abs(x1[i] - x2[i]) <= 1e-14:
            continue
        y1, y2 = min(x1[i], x2[i]), max(x1[i], x2[i])
        span = y2 - y1
        c = []
        for beta_bound in (1.0 + 2.0 * (y1 - low) / span, 1.0 + 2.0 * (high - y2) / span):
            alpha = 2.0 - beta_bound ** -(eta + 1.0)
            u = u_beta[i]
            if u <= 1.0 / alpha:
                betaq = (u * alpha) ** (1.0 / (eta + 1.0))
            else:
                betaq = (1.0 / (2.0 - u * alpha)) ** (1.0 / (eta + 1.0))
            c.append(betaq)
        c1 = 0.5 * (y1 + y2 - c[0] * span)
        c2 = 0.5 * (y1 + y2 + c[1] * span)
        c1, c2 = min(max(c1, low), high), min(max(c2, low), high)
        if u_swap[i] < 0.5:
            c1, c2 = c2, c1
        x1[i], x2[i] = c1, c2
    return x1, x2


def slerp(t: ArrayLike, a: ArrayLike, b: ArrayLike, origin: float | ArrayLike = 0.0, eps: float = 1e-6) -> Array:
    """Spherical interpolation from ``a`` (t = 0) to ``b`` (t = 1) about ``origin``.

    ``t`` may be a scalar or one value per gene; the angle always comes from the whole vectors
    ``a − origin`` and ``b − origin``. Falls back to linear interpolation when the vectors are
    (nearly) colinear or one of them is zero (the reference code's rule: sin Ω ≤ eps).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    t = np.asarray(t, dtype=float)
    o = np.asarray(origin, dtype=float)
    u, v = a - o, b - o
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu > 0 and nv > 0:
        omega = float(np.arccos(np.clip(np.dot(u / nu, v / nv), -1.0, 1.0)))
        sin_omega = np.sin(omega)
        if sin_omega > eps:
            return o + (np.sin((1.0 - t) * omega) * u + np.sin(t * omega) * v) / sin_omega
    return (1.0 - t) * a + t * b


def split_point_crossover(
    a: ArrayLike, b: ArrayLike, split: int, mix: float, *, method: str = "linear", origin: float | ArrayLike = 0.0
) -> Array:
    """M2N2 crossover with a given split point ``split`` and mixing ratio ``mix`` (docs/DESIGN.md, "Strategies").

    Genes before ``split`` are ``mix·a + (1 − mix)·b``, genes from ``split`` on ``(1 − mix)·a + mix·b``;
    so ``mix = 1`` returns ``a`` before the split and ``b`` after. With ``method="slerp"`` the same
    per-gene ratios are applied by SLERP with one angle from the whole vectors (about ``origin``).
    Draw the arguments with :func:`draw_split` for the random operator. No clipping: linear mixing
    stays within the parents' per-gene range; clip SLERP results yourself.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    weight_of_a = np.where(np.arange(a.shape[0]) < split, mix, 1.0 - mix)
    if method == "linear":
        return weight_of_a * a + (1.0 - weight_of_a) * b
    if method == "slerp":
        return slerp(1.0 - weight_of_a, a, b, origin=origin)
    raise ValueError(f"unknown mixing method {method!r}; use 'linear' or 'slerp'")


def draw_split(rng: np.random.Generator, dim: int) -> tuple[int, float]:
    """The M2N2 crossover's random arguments: split point uniform in ``0 … dim−1``, mix ~ U(0, 1)."""
    return int(rng.integers(0, dim)), float(rng.random())


# --- mutation ----------------------------------------------------------------------------------


def gaussian_mutation(
    rng: np.random.Generator, x: ArrayLike, sigma: float, rate: float = 1.0, low: float = 0.0, high: float = 1.0
) -> Array:
    """Add N(0, sigma²) to each gene with probability ``rate``; clip to ``[low, high]``."""
    x = np.asarray(x, dtype=float)
    noise = rng.normal(0.0, 1.0, x.shape) * sigma
    mask = rng.random(x.shape) < rate
    return np.clip(np.where(mask, x + noise, x), low, high)


def polynomial_mutation(
    rng: np.random.Generator, x: ArrayLike, eta: float = 20.0, rate: float | None = None, low: float = 0.0,
    high: float = 1.0
) -> Array:
    """Deb's bounded polynomial mutation; each gene mutates with probability ``rate`` (default 1/dim)."""
    y = np.asarray(x, dtype=float).copy()
    n = y.shape[0]
    rate = 1.0 / n if rate is None else rate
    mask, u = rng.random(n) < rate, rng.random(n)
    span = high - low
    for i in np.flatnonzero(mask):
        d1, d2 = (y[i] - low) / span, (high - y[i]) / span
        power = 1.0 / (eta + 1.0)
        if u[i] < 0.5:
            val = 2.0 * u[i] + (1.0 - 2.0 * u[i]) * (1.0 - d1) ** (eta + 1.0)
            dq = val**power - 1.0
        else:
            val = 2.0 * (1.0 - u[i]) + 2.0 * (u[i] - 0.5) * (1.0 - d2) ** (eta + 1.0)
            dq = 1.0 - val**power
        y[i] = min(max(y[i] + dq * span, low), high)
    return y


# --- selection ---------------------------------------------------------------------------------


def tournament(rng: np.random.Generator, quality: ArrayLike, n: int, size: int = 2) -> NDArray[np.int64]:
    """``n`` winners of tournaments among ``size`` members drawn with replacement (higher quality wins;
    on a tie the member drawn first)."""
    q = np.asarray(quality, dtype=float)
    entrants = rng.integers(0, q.shape[0], size=(n, size))
    return entrants[np.arange(n), np.argmax(q[entrants], axis=1)]


def truncation(quality: ArrayLike, k: int) -> NDArray[np.int64]:
    """Indices of the ``k`` best (elitism); ties keep the lower index first."""
    q = np.asarray(quality, dtype=float)
    return np.argsort(-q, kind="stable")[:k]


def nsga2_survival(objectives: ArrayLike, k: int) -> NDArray[np.int64]:
    """Indices of the ``k`` survivors: whole fronts in order, then the last front's most crowded-apart
    members (elitist (mu + lambda) selection of NSGA-II)."""
    f = np.asarray(objectives, dtype=float)
    chosen: list[int] = []
    for front in non_dominated_sort(f):
        if len(chosen) + len(front) <= k:
            chosen.extend(front)
            continue
        cd = crowding_distance(f[front])
        order = np.argsort(-cd, kind="stable")
        chosen.extend(front[i] for i in order[: k - len(chosen)])
        break
    return np.asarray(chosen, dtype=np.int64)


def crowded_quality(objectives: ArrayLike) -> Array:
    """A scalar per row that orders by (rank ascending, crowding distance descending): what the
    NSGA-II binary tournament compares. Pass it to :func:`tournament`."""
    f = np.asarray(objectives, dtype=float)
    rank = np.zeros(f.shape[0], dtype=np.int64)
    crowd = np.zeros(f.shape[0])
    for r, front in enumerate(non_dominated_sort(f)):
        rank[front] = r
        crowd[front] = crowding_distance(f[front])
    order = np.lexsort((-crowd, rank))  # best first
    quality = np.empty(f.shape[0])
    quality[order] = -np.arange(f.shape[0], dtype=float)
    # equal (rank, crowding) pairs share a quality, so a tournament breaks the tie by draw order
    for i in range(1, len(order)):
        if rank[order[i]] == rank[order[i - 1]] and crowd[order[i]] == crowd[order[i - 1]]:
            quality[order[i]] = quality[order[i - 1]]
    return quality


def loads(scores: ArrayLike, alpha: float = 1.0) -> Array:
    """Per-item divisor z_j^alpha with z_j = sum_i s_ij over the given rows (z_j = 0 → 1)."""
    s = np.asarray(scores, dtype=float)
    z = s.sum(axis=0)
    z = np.where(z != 0, z, 1.0)
    return z**alpha


def niche_fitness(scores: ArrayLike, alpha: float = 1.0, item_weights: ArrayLike | None = None) -> Array:
    """Natural-niches fitness f_i = sum_j c_j s_ij / z_j^alpha, loads over all given rows
    (pass archive + child for the competition, the archive alone for parent selection)."""
    s = np.asarray(scores, dtype=float)
    c = np.ones(s.shape[1]) if item_weights is None else np.asarray(item_weights, dtype=float)
    return (s * c / loads(s, alpha)).sum(axis=1)


def niche_replacement(archive_scores: ArrayLike, child_scores: ArrayLike, alpha: float = 1.0) -> int | None:
    """The archive row the child replaces, or None when the child is the (first) worst itself.

    Fitness is computed with loads over archive + child; the loser is the argmin over archive + child,
    first index on ties — so a child that ties the worst member replaces it."""
    ext = np.vstack([np.asarray(archive_scores, dtype=float), np.asarray(child_scores, dtype=float)[None, :]])
    worst = int(np.argmin(niche_fitness(ext, alpha)))
    return worst if worst < ext.shape[0] - 1 else None


def attraction(scores: ArrayLike, a: int, alpha: float = 1.0) -> Array:
    """g(a, b) = sum_j max(s_bj/z_j^alpha − s_aj/z_j^alpha, 0) for every row b: how much b solves,
    load-weighted, where a fails (loads over the given rows)."""
    s = np.asarray(scores, dtype=float)
    f = s / loads(s, alpha)
    return np.maximum(f - f[a], 0.0).sum(axis=1)


def proportional(rng: np.random.Generator, weights: ArrayLike, fallback: Sequence[int] | None = None) -> int:
    """Index drawn with probability weights/sum(weights); when the sum is 0, uniform over ``fallback``
    (default: all indices)."""
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    if total > 0 and np.isfinite(total):
        return int(rng.choice(w.shape[0], p=w / total))
    pool = list(range(w.shape[0])) if fallback is None else list(fallback)
    return int(pool[int(rng.integers(0, len(pool)))])
