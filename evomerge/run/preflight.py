"""Everything a search config refers to, checked before a run folder is created.

``load_config`` has checked every key, type and range. This checks what needs the rest of the
program: the models (configs and tensor headers, no weights read), the genome (methods, bounds,
parameters), the strategy, its options and whether it can race, the objectives' tasks, metrics and
filters (lm-eval's task index, no model and no dataset loaded), and the execution settings with the
memory plan (a budget that cannot hold a worker's minimum). The first problem is one ``EvomergeError``;
nothing is written, so the same command works once the config is fixed.
"""

from __future__ import annotations

from evomerge.config.search import SearchConfig
from evomerge.errors import EvomergeError
from evomerge.genome.space import GenomeSpace
from evomerge.genome.starts import seed_points
from evomerge.materialize.memory import plan_for_config
from evomerge.scoring.catalog import describe_tasks, is_benchmark_test_set
from evomerge.sources.pool import check_compatible
from evomerge.strategies import make_strategy, racing_strategies


def check(cfg: SearchConfig) -> GenomeSpace:
    """Check the whole config against the models, methods, strategies and tasks; returns its genome space."""
    src = cfg.sources
    check_compatible(src.base, src.models, allow_pickle=src.allow_pickle, trust_remote_code=src.trust_remote_code)
    space = GenomeSpace.for_config(cfg)
    make_strategy(cfg.strategy.name, space.dim, len(cfg.objectives), seed=cfg.seed,
                  weights=[o.weight for o in cfg.objectives], initial=seed_points(space), **cfg.strategy.options)
    check_fidelity(cfg)
    check_benchmarks(cfg)
    check_objectives(cfg)
    check_prompt(cfg)
    check_execution(cfg)
    return space


def check_fidelity(cfg: SearchConfig) -> None:
    """Racing needs a strategy that says what its generation's selection keeps; the others need full scores."""
    can = racing_strategies()
    if cfg.scoring.fidelity == "racing" and cfg.strategy.name not in can:
        raise EvomergeError(f"config field 'scoring.fidelity': strategy '{cfg.strategy.name}' cannot race (it needs "
                            f"every candidate's full score; docs/SCORING.md, \"Cheap fitness\"); racing works with "
                            f"{', '.join(can)}: use one of them, or fidelity: full")


def check_benchmarks(cfg: SearchConfig) -> None:
    """No search optimizes on lm-eval's own benchmark test sets unless the config says so (held-out tasks may)."""
    if cfg.scoring.task_path is not None or cfg.scoring.allow_benchmark_tasks:
        return  # a folder of task YAMLs holds the user's own tasks, lm-eval's are not loaded
    for j, o in enumerate(cfg.objectives):
        if is_benchmark_test_set(o.task):
            raise EvomergeError(f"config field 'objectives[{j}].task': '{o.task}' is lm-eval's test set of a "
                                "well-known benchmark, and a search fitted to it reports a score it was tuned on; "
                                "optimize on a calibration task of your own (held-out: the benchmark), or set "
                                "scoring.allow_benchmark_tasks: true (search --allow-benchmark-tasks)")


def check_objectives(cfg: SearchConfig) -> None:
    """Every objective's calibration and held-out task exists and has the metric and filter it names."""
    names = [o.task_for(split) for o in cfg.objectives for split in ("calibration", "heldout")]
    tasks = describe_tasks(names, cfg.scoring.task_path)
    for j, o in enumerate(cfg.objectives):
        for split in ("calibration", "heldout"):
            info = tasks[o.task_for(split)]
            named = [("metric", o.metric)] + ([("search_metric", o.search_metric)] if split == "calibration" else [])
            for name, metric in named:
                if metric is not None and metric not in info.metrics:
                    raise EvomergeError(f"config field 'objectives[{j}].{name}': task '{info.name}' has no metric "
                                        f"'{metric}' (it has: {', '.join(info.metrics)})")
            if o.filter is not None and o.filter not in info.filters:
                raise EvomergeError(f"config field 'objectives[{j}].filter': task '{info.name}' has no filter "
                                    f"'{o.filter}' (it has: {', '.join(info.filters)})")


def check_prompt(cfg: SearchConfig) -> None:
    """A chat template is asked for only where the base's tokenizer has one."""
    if cfg.scoring.apply_chat_template:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.sources.base, local_files_only=True,
                                                  trust_remote_code=cfg.sources.trust_remote_code)
        if not getattr(tokenizer, "chat_template", None):
            raise EvomergeError(f"config field 'scoring.apply_chat_template': the tokenizer of {cfg.sources.base} has "
                                "no chat template; give it one, or set apply_chat_template: false")


def check_execution(cfg: SearchConfig) -> None:
    e = cfg.execution
    if e.backend == "local" and e.workers > 1:
        raise EvomergeError(f"config field 'execution.workers' is {e.workers} but the local backend runs one worker in "
                            "this process: use backend ray (--backend ray) for several workers")
    if e.in_flight < e.workers:
        raise EvomergeError(f"config field 'execution.in_flight' ({e.in_flight}) must be >= execution.workers "
                            f"({e.workers}), or some workers would always wait")
    if e.backend == "local" and e.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EvomergeError(f"config field 'execution.device' is {e.device} but this machine has no CUDA device: "
                                "use device cpu, or run on a GPU machine")
    plan_for_config(cfg)  # a budget that cannot hold a worker's minimum is refused now, not after the workers start
