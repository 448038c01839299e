"""A Worker keeps the sources and one model resident and turns recipes into scores.

It never decides what to evaluate: it is handed a recipe, merges it on its own device straight
into its preallocated model's parameters (no disk), scores that model with lm-eval requests built
once, and returns plain data. The same class runs in-process (LocalExecutor) and as a Ray actor
(RayExecutor). Its sources are either read from the folders here (in process) or mapped from the
node's shared copy (``spec.sources_store``: Ray's object store, no copy per worker); what it caches
and where is the memory plan's ``policy``.
"""

from __future__ import annotations

import functools
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from evomerge.config.search import ScoringConfig, SearchConfig
from evomerge.env import set_offline_env
from evomerge.errors import EvomergeError
from evomerge.materialize.fused import CachePolicy, FastMerger
from evomerge.materialize.memory import MemoryPlan, plan_for_config
from evomerge.materialize.plan import DTYPES, MergePlan
from evomerge.materialize.statistics import every_source_statistics
from evomerge.merge.registry import Statistics
from evomerge.recipes.recipe import Recipe
from evomerge.scoring.fisher import fisher_diagonals
from evomerge.scoring.gram import calibration_tokens, data_fingerprint, gram_matrices
from evomerge.scoring.model import load_causal_lm
from evomerge.scoring.result import TaskScore
from evomerge.scoring.scorer import Scorer, load_tasks
from evomerge.sources.pool import SharedSources, SourcePool


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to start, as plain data (it travels to Ray actors)."""

    base: Path
    sources: tuple[Path, ...]
    calibration_tasks: tuple[str, ...]
    heldout_tasks: tuple[str, ...]
    scoring: ScoringConfig = ScoringConfig()  # task folder, batch size, prompt options
    device: str = "cpu"
    threads: int = 1  # torch threads: fixed, because reductions split over threads round differently
    allow_pickle: bool = False
    trust_remote_code: bool = False
    fast_merge: bool = True  # fused merges for the methods that have one (eager operators otherwise)
    policy: CachePolicy | None = None  # the memory plan's decisions; None: cache everything (small models, tests)
    dtype: str | None = None  # the live model's dtype; None: the sources' own
    tokenizer: Path | None = None  # tokenizer (and chat template) folder; None: the base's
    sources_store: str | None = None  # the Ray actor that hands out the sources' object-store handles; None: read here

    @classmethod
    def from_config(cls, cfg: SearchConfig, plan: MemoryPlan | None = None) -> "WorkerSpec":
        """The same spec on every backend, so one config gives one log locally and on Ray."""
        plan = plan if plan is not None else plan_for_config(cfg)
        return cls(
            base=cfg.sources.base, sources=cfg.sources.models,
            calibration_tasks=tuple(o.task_for("calibration") for o in cfg.objectives),
            heldout_tasks=tuple(o.task_for("heldout") for o in cfg.objectives),
            scoring=cfg.scoring, device=cfg.execution.device,
            threads=cfg.execution.threads or 1, policy=plan.policy, dtype=cfg.genome.dtype,
            tokenizer=cfg.sources.tokenizer_source, allow_pickle=cfg.sources.allow_pickle,
            trust_remote_code=cfg.sources.trust_remote_code,
        )

    @property
    def merge_policy(self) -> CachePolicy:
        """The policy, or caching everything: in place on the CPU, resident on a GPU."""
        if self.policy is not None:
            return self.policy
        return CachePolicy() if self.device == "cpu" else CachePolicy(sources="resident")


@dataclass(frozen=True)
class Outcome:
    """Scores of one candidate per task (None when it failed, with ``error`` saying why) and its timings."""

    scores: Mapping[str, TaskScore] | None
    error: str | None = None
    merge_s: float = 0.0
    score_s: float = 0.0
    worker: str = ""
    tokens: int = 0  # tokens of the requests scored (``Scorer.tokens``); 0 when nothing was scored
    machine: bool = False  # the error is the machine's (disk, memory), not the candidate's: it must not be logged

    def checked(self, what: str) -> "Outcome":
        """This outcome, unless its failure is the machine's: then a one-line error, so that no record says the
        candidate or baseline ``what`` failed when a rerun on a working machine would score it."""
        if self.machine:
            raise EvomergeError(f"{what} could not be scored on {self.worker}: {self.error} -- a problem of the "
                                "machine, not of the recipe, so nothing was logged for it; fix it (free disk or "
                                "memory), then run the command again")
        return self


# Failures of the machine rather than of a candidate: the same recipe would score on a working machine.
MACHINE_ERRORS: tuple[type[BaseException], ...] = (OSError, MemoryError, torch.OutOfMemoryError)


class CandidateFailed(Exception):
    """The candidate, not the worker, is broken (non-finite weights or scores)."""


class Worker:
    def __init__(self, spec: WorkerSpec, name: str = "worker-0"):
        set_offline_env()
        torch.set_num_threads(spec.threads)
        self.spec, self.name = spec, f"{name}@{socket.gethostname()}"
        self.pool = self._sources(spec)
        dtype = DTYPES[spec.dtype] if spec.dtype else self.pool.dtype
        self.model, self.tokenizer = load_causal_lm(spec.base, device=spec.device, allow_pickle=spec.allow_pickle,
                                                    trust_remote_code=spec.trust_remote_code, dtype=dtype,
                                                    tokenizer=spec.tokenizer)
        self.params = self.model.state_dict()  # views of the live parameters: copy_ writes in place
        # Fused merges on the worker's device, caching what the memory plan allows (docs/MEMORY.md);
        # fast_merge False runs the eager operators only.
        self.fast = FastMerger(self.pool, policy=spec.merge_policy, device=spec.device) if spec.fast_merge else None
        self._scorers: dict[str, Scorer] = {}
        self.merged: Recipe | None = None  # the recipe the live model holds (a candidate's next chunk reuses it)
        self.ensured: set[tuple[Path, Statistics, str]] = set()  # (folder, kind, data fingerprint) checked complete
        self.scorer("calibration")  # build requests now, not on the first candidate

    @staticmethod
    def _sources(spec: WorkerSpec) -> SourcePool:
        if spec.sources_store is None:
            return SourcePool.load(spec.base, list(spec.sources), allow_pickle=spec.allow_pickle,
                                   trust_remote_code=spec.trust_remote_code)
        import ray  # the node's copy in Ray's object store: mapped, not copied

        shared: SharedSources = ray.get(ray.get_actor(spec.sources_store).get.remote())
        return SourcePool.attach(shared, ray.get)

    def scorer(self, split: str) -> Scorer:
        if split not in self._scorers:
            tasks = self.spec.calibration_tasks if split == "calibration" else self.spec.heldout_tasks
            s = self.spec.scoring
            self._scorers[split] = Scorer(self.model, self.tokenizer, load_tasks(tasks, s.task_path),
                                          batch_size=s.batch_size, **s.prompt_options)
        return self._scorers[split]

    def materialize(self, recipe: Recipe) -> None:
        """Write the merged model into the resident parameters, unless they hold it already;
        refuse non-finite weights."""
        if recipe == self.merged:
            return
        self.merged = None  # half-written until the merge succeeds
        self._merge(recipe)
        self.merged = recipe

    def _merge(self, recipe: Recipe) -> None:
        if recipe.statistics is not None:
            for kind in recipe.statistics_kinds:
                self.ensure_statistics(recipe.statistics, kind)
        plan = MergePlan.build(recipe, self.pool)
        if self.fast is not None:  # fused path for the methods it covers, the eager operator for the rest
            bad = self.fast.materialize(plan, self.params)
            if bad:
                raise CandidateFailed(f"merged tensor {bad[0]} has NaN/Inf values")
            return
        with torch.no_grad():
            for name, tensor in plan.iter_tensors(self.pool):
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise CandidateFailed(f"merged tensor {name} has NaN/Inf values")
                if name in self.params:
                    self.params[name].copy_(tensor)

    @functools.cached_property
    def calibration_tokens(self) -> list[list[int]]:
        """The calibration prompts' token sequences the statistics of every kind come from (``scoring.gram``;
        at most ``scoring.statistics_texts`` of them), tokenized once."""
        return calibration_tokens(self.scorer("calibration"), self.spec.scoring.statistics_texts)

    @functools.cached_property
    def calibration_fingerprint(self) -> str:
        """SHA-256 of the calibration token sequences the statistics of ``source_statistics`` come from: hashed once,
        not on every merge of a recipe that needs statistics."""
        return data_fingerprint(self.calibration_tokens)

    def source_statistics(self, kind: Statistics, source: int) -> dict[str, torch.Tensor]:
        """Source ``source``'s statistics of ``kind`` on the calibration prompts, on the CPU: input Gram matrices
        (``scoring.gram``) or diagonal Fisher (``scoring.fisher``). The live model is loaded with that source's
        weights for the passes (the next candidate merges afresh)."""
        self.merged = None
        with torch.no_grad():
            for name, tensor in self.pool.sources[source].tensors.items():
                if name in self.params:
                    self.params[name].copy_(tensor)
        if kind == "fisher":
            stats = fisher_diagonals(self.model, self.calibration_tokens)
        else:
            stats = gram_matrices(self.model, self.calibration_tokens, batch_size=self.spec.scoring.batch_size)
        return {name: t.cpu() for name, t in stats.items()}

    def ensure_statistics(self, folder: Path, kind: Statistics) -> None:
        """Every source's statistics of ``kind`` in ``folder``: computed here where it lacks them for these models
        and this calibration data (``materialize/statistics.py``), else left as they are. Checked once per worker:
        a search whose genes use the method merges with them on every candidate, and a file once right is never
        rewritten."""
        data = self.calibration_fingerprint
        if (folder, kind, data) in self.ensured:
            return
        every_source_statistics(folder, kind, [source.fingerprint for source in self.pool.sources], data,
                                functools.partial(self.source_statistics, kind))
        self.ensured.add((folder, kind, data))

    def evaluate(self, recipe: Recipe, split: str = "calibration",
                 items: Mapping[str, Sequence[int]] | None = None) -> Outcome:
        """Scores of ``recipe`` on ``split``: every item, or only ``items`` (task -> document positions: a chunk)."""
        t0 = time.perf_counter()
        try:
            self.materialize(recipe)
            t1 = time.perf_counter()
            with torch.no_grad():
                scores = self.scorer(split).score(items)
            t2 = time.perf_counter()
        except Exception as e:  # the candidate is broken, not the worker: log it and keep serving
            return Outcome(None, error=f"{type(e).__name__}: {e}", merge_s=time.perf_counter() - t0, worker=self.name,
                           machine=isinstance(e, MACHINE_ERRORS))
        return Outcome(scores, merge_s=t1 - t0, score_s=t2 - t1, worker=self.name,
                       tokens=self.scorer(split).tokens(items))

