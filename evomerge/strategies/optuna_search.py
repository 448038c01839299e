"""``optuna``: optuna's samplers behind the ask/tell protocol.

Samplers (option ``sampler``): ``tpe`` — ``TPESampler(seed, multivariate=True, constant_liar=True)``;
``nsga2`` — ``NSGAIISampler(seed, population_size)``; ``cmaes`` — ``CmaEsSampler(seed)``. The study
maximizes every objective (a multi-objective study when there are several, for ``tpe`` and ``nsga2``);
``cmaes`` is single-objective and maximizes the weighted mean of the objectives. Each gene is a
``FloatDistribution(0, 1)`` named ``x0000``, ``x0001``, …; the ``initial`` points are enqueued
trials, asked first. A failed candidate is told as ``TrialState.FAIL``.

With ``storage_path`` the study lives in SQLite at that path (``sqlite:///…``) so optuna's own tools
(``optuna-dashboard``, ``optuna.load_study``) can read it. A run is resumed by replaying its log into
a fresh strategy, so construction deletes an existing file at that path and starts a fresh study.

Determinism: the samplers draw from their own seeded generators and see trials in ask order, so the
sequence depends only on the seed and the tells (the constant liar makes TPE propose while earlier
trials are still running, deterministically). optuna's logging is set to WARNING.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.strategies.base import Candidate, Evaluation, Strategy, as_point
from evomerge.strategies.cmaes import default_popsize

SAMPLERS = ("tpe", "nsga2", "cmaes")


@dataclass(frozen=True)
class OptunaOptions:
    sampler: str = "tpe"  # "tpe", "nsga2" or "cmaes"
    storage_path: str | None = None  # SQLite file for the study (replaced on construction); None = in memory
    n_startup_trials: int = 10  # tpe: random trials before the model is used
    population_size: int = 50  # nsga2: members per generation

    def check(self) -> str | None:
        if self.sampler not in SAMPLERS:
            return f"'sampler' must be one of {', '.join(SAMPLERS)}, got '{self.sampler}'"
        if self.n_startup_trials < 0:
            return "'n_startup_trials' must be >= 0"
        if self.population_size < 2:
            return "'population_size' must be >= 2"
        return None


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
        directions = ["maximize"] * (self.n_objectives if self.multi else 1)
        storage = None
        if o.storage_path is not None:
            path = Path(o.storage_path).expanduser().resolve()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                for stale in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal")):
                    stale.unlink(missing_ok=True)
            except OSError as e:
                raise EvomergeError(f"strategy 'optuna': cannot create the study file {path}: {e}") from e
            storage = f"sqlite:///{path}"
        self.study = optuna.create_study(
            study_name="evomerge", storage=storage, sampler=sampler, directions=directions
        )
        self.names = [f"x{i:04d}" for i in range(self.dim)]
        self.distributions = {n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in self.names}
        for point in self.initial:
            self.study.enqueue_trial(dict(zip(self.names, point)))
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
