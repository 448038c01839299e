"""``optuna``: optuna's samplers behind the ask/tell protocol.

Samplers (option ``sampler``): ``tpe`` — ``TPESampler(seed, multivariate=True, constant_liar=True)``;
``nsga2`` — ``NSGAIISampler(seed, population_size)``; ``cmaes`` — ``CmaEsSampler(seed)``. The study
maximizes every objective (a multi-objective study when there are several, for ``tpe`` and ``nsga2``);
``cmaes`` is single-objective and maximizes the weighted mean of the objectives. Each gene is a
``FloatDistribution(0, 1)`` named ``x0000``, ``x0001``, …; the ``initial`` points are enqueued
trials, asked first. A failed candidate is told as ``TrialState.FAIL``.

With a ``storage`` URL (the run hands it ``sqlite:///<run>/optuna.db``, fresh for each session) the
study lives there, so optuna's own tools (``optuna-dashboard``, ``optuna.load_study``) can read it; a
run is resumed by replaying its log into a fresh strategy and study. Without one the study is in memory.

Determinism: the samplers draw from their own seeded generators and see trials in ask order, so the
sequence depends only on the seed and the tells (the constant liar makes TPE propose while earlier
trials are still running, deterministically). optuna's logging is set to WARNING.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from evomerge.strategies.base import Candidate, Evaluation, Strategy, as_point
from evomerge.strategies.cmaes import default_popsize


@dataclass(frozen=True)
class OptunaOptions:
    sampler: Literal["tpe", "nsga2", "cmaes"] = "tpe"
    n_startup_trials: int = field(default=10, metadata={"ge": 0})  # tpe: random trials before the model is used
    population_size: int = field(default=50, metadata={"ge": 2})  # nsga2: members per generation


class OptunaSearch(Strategy):
    name = "optuna"
    Options = OptunaOptions

    def _setup(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        o = self.options
        sampler_seed = int(np.random.SeedSequence([self.seed, 2]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: optuna.samplers.BaseSampler
            if o.sampler == "tpe":
                sampler = optuna.samplers.TPESampler(
                    seed=sampler_seed, multivariate=True, constant_liar=True, n_startup_trials=o.n_startup_trials
                )
                self.generation_size = 16
            elif o.sampler == "nsga2":
                sampler = optuna.samplers.NSGAIISampler(seed=sampler_seed, population_size=o.population_size)
                self.generation_size = o.population_size
            else:
                sampler = optuna.samplers.CmaEsSampler(seed=sampler_seed, warn_independent_sampling=False)
                self.generation_size = default_popsize(self.dim)
        self.multi = self.n_objectives > 1 and o.sampler != "cmaes"
        directions = [optuna.study.StudyDirection.MAXIMIZE] * (self.n_objectives if self.multi else 1)
        self.study = optuna.create_study(
            study_name="evomerge", storage=self.storage, sampler=sampler, directions=directions
        )
        self.names = [f"x{i:04d}" for i in range(self.dim)]
        gene = optuna.distributions.FloatDistribution(0.0, 1.0)
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {n: gene for n in self.names}
        for point in self.initial:
            self.study.enqueue_trial(dict(zip(self.names, point, strict=True)))
        self._trials: list[Any] = []  # asked trials not told yet, in ask order
        self._proposed = 0

    def _ask(self) -> Candidate | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self._optuna.exceptions.ExperimentalWarning)
            trial = self.study.ask(fixed_distributions=self.distributions)
        self._trials.append(trial)
        x = as_point([trial.params[n] for n in self.names])
        if trial.number < len(self.initial):
            return Candidate(x=x, operator="init", generation=0)
        generation = 1 + self._proposed // self.generation_size
        self._proposed += 1
        return Candidate(x=x, operator=self.options.sampler, generation=generation)

    def _tell(self, index: int, candidate: Candidate, evaluation: Evaluation) -> None:
        trial = self._trials.pop(0)
        values = [float(v) for v in evaluation.objectives] if self.multi else [self.scalarize(evaluation)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self._optuna.exceptions.ExperimentalWarning)
            if evaluation.failed or not all(math.isfinite(v) for v in values):
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, values if self.multi else values[0])
