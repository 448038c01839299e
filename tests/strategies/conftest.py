"""Shared helpers for strategy tests: a driver loop with an in-flight lag, and synthetic problems."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from evomerge.strategies import Candidate, Evaluation, Strategy


def drive(strategy: Strategy, evaluate: Callable[[tuple[float, ...]], Evaluation], budget: int, lag: int = 4):
    """Ask/tell like the run driver: candidate i is asked once results 0 … i−lag are told, tells in
    ask order. Returns the (candidate, evaluation) pairs in ask order."""
    pending: list[Candidate] = []
    done: list[tuple[Candidate, Evaluation]] = []
    asked = 0
    while asked < budget or pending:
        while len(pending) < lag and asked < budget:
            c = strategy.ask()
            if c is None:
                break
            pending.append(c)
            asked += 1
        c = pending.pop(0)
        e = evaluate(c.x)
        strategy.tell(c, e)
        done.append((c, e))
    return done


OPT = np.array([0.3, 0.7, 0.45, 0.6, 0.25, 0.55])
TOLERANCES = np.array([0.4, 0.2, 0.1, 0.05, 0.02, 0.01])


def quadratic(x: tuple[float, ...]) -> Evaluation:
    """-||x − OPT||² (optimum inside the box); per-item: gene k within tolerance τ of its optimum."""
    x = np.asarray(x)
    items = (np.abs(x - OPT)[:, None] < TOLERANCES[None, :]).astype(float).ravel()
    return Evaluation((-float(np.sum((x - OPT) ** 2)),), per_item=tuple(items))


def zdt(x: tuple[float, ...]) -> Evaluation:
    """ZDT1-like, oriented (higher is better): minimize f1 = x0 and f2 = g (1 − sqrt(f1/g)),
    g = 1 + Σ_{i≥1} (x_i − 0.5)²; the front is f2 = 1 − sqrt(f1) at g = 1."""
    x = np.asarray(x)
    g = 1.0 + float(np.sum((x[1:] - 0.5) ** 2))
    f1 = float(x[0])
    return Evaluation((-f1, -g * (1.0 - np.sqrt(f1 / g))))


def hypervolume_2d(minimized: np.ndarray, ref: tuple[float, float] = (1.1, 1.1)) -> float:
    """Area dominated by a set of 2-objective points (minimization) inside the reference box."""
    p = minimized[(minimized[:, 0] < ref[0]) & (minimized[:, 1] < ref[1])]
    p = p[np.lexsort((p[:, 1], p[:, 0]))]
    area, level = 0.0, ref[1]
    for f1, f2 in p:
        if f2 < level:
            area += (ref[0] - f1) * (level - f2)
            level = f2
    return area


ZDT_TRUE_HYPERVOLUME = 0.1 + 2.0 / 3.0 + 0.1 * 1.1  # ∫_0^1 (1.1 − 1 + √f) df + (1.1 − 1)·1.1


@pytest.fixture
def driver():
    return drive
