"""Export: a chosen candidate of a run -> a Hugging Face model folder with card and recipes.

The folder holds the merged weights (sharded safetensors + index when large, written shard by shard
through the fused kernels), the base's config (with the merged dtype), the tokenizer files, chat
template and generation config of ``sources.tokenizer_source`` (default: the base), and:
- ``README.md``: the model card (card.py);
- ``evomerge_recipe.yaml``: the candidate's recipe with absolute paths; ``evomerge merge
  evomerge_recipe.yaml --out X`` rebuilds the same tensors;
- ``mergekit.yaml``: the same merge for mergekit whenever the genome uses one method mergekit has
  (slices per layer group, filters per parameter kind), its models named as in the card; where
  mergekit cannot reproduce the weights (random drops) it is mergekit's closest setting, and the card
  says so. A genome mixing methods gets none, and the card says why.

Nothing is written unless everything succeeded, including the load check (``loadcheck.py``) on the
finished folder; the folder is built beside ``--out`` and renamed.
"""

from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from evomerge.config.sizes import DEFAULT_SHARD_SIZE, parse_size
from evomerge.errors import EvomergeError
from evomerge.export.card import model_card
from evomerge.export.evaluator import Evaluator, ExecutorFactory, check_sources
from evomerge.export.finalists import DEFAULT_FINALISTS, analyze, find_candidate, parse_pick
from evomerge.export.loadcheck import check_loads
from evomerge.materialize.folder import write_merged
from evomerge.materialize.plan import MergePlan
from evomerge.recipes import Recipe, to_yaml
from evomerge.recipes.mergekit_yaml import to_mergekit
from evomerge.run.log import RunLog
from evomerge.run.records import CandidateRecord, ExportRecord
from evomerge.run.trackers import Trackers
from evomerge.sources.pool import SourcePool
from evomerge.sources.writer import check_output_folder, check_outside


@dataclass(frozen=True)
class ExportResult:
    out: Path
    record: CandidateRecord  # the exported candidate's log record
    recipe: Recipe
    mergekit: bool
    evaluated: int  # evaluations this export had to run (0 when the log had them all)


def export_candidate(
    run_dir: str | Path,
    out: str | Path,
    *,
    pick: str | int = "calibration",
    finalists: int = DEFAULT_FINALISTS,
    force: bool = False,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    executor_factory: ExecutorFactory | None = None,
    quiet: bool = False,
) -> ExportResult:
    out = Path(out).resolve()
    run = RunLog.open(Path(run_dir))
    check_outside(out, run.inputs())
    check_output_folder(out, force)
    shard_bytes = parse_size(shard_size)
    rule = parse_pick(pick)
    with run.session():
        return _export(run, out, rule, finalists, force, shard_size, shard_bytes, executor_factory, quiet)


def _export(run: RunLog, out: Path, rule: str | int, finalists: int, force: bool, shard_size: int | str,
            shard_bytes: int, executor_factory: ExecutorFactory | None, quiet: bool) -> ExportResult:
    cfg = run.config()
    if rule == "heldout" and finalists < 1:
        raise EvomergeError("--pick heldout needs held-out finalists: use --rescore-heldout 1 or more, "
                            "or --pick calibration / knee / an index")
    if isinstance(rule, int):
        find_candidate(run, rule)  # a wrong index is refused before anything is scored
    with Evaluator(run, executor_factory, quiet=quiet) as evaluator:
        analysis = analyze(run, evaluator, finalists=finalists)
        record = analysis.pick(rule)
        evaluated = evaluator.evaluated
    if not evaluated:
        check_sources(run)  # the evaluator checked them if it started a worker

    src = cfg.sources
    recipe = replace(analysis.space.to_recipe(record.x), tokenizer_source=src.tokenizer_source)
    recipe.validate()
    pool = SourcePool.load(src.base, list(src.models), allow_pickle=src.allow_pickle,
                           trust_remote_code=src.trust_remote_code)
    plan = MergePlan.build(recipe, pool)
    mergekit, mergekit_note = to_mergekit(recipe, pool.tensor_names, plan.dtype_name(pool), src.labels())
    command = ["evomerge", "export", "RUN_DIR", "--out", "MODEL_DIR", "--pick", str(record.index),
               "--rescore-heldout", str(finalists)]
    if shard_bytes != parse_size(DEFAULT_SHARD_SIZE):
        command += ["--shard-size", str(shard_size)]
    card = model_card(analysis, record, recipe, mergekit_note=mergekit_note, mergekit=mergekit is not None,
                      export_command=shlex.join(command), pick=str(rule))
    files = {"README.md": card, "evomerge_recipe.yaml": to_yaml(recipe)}
    if mergekit is not None:
        files["mergekit.yaml"] = mergekit
    write_merged(plan, pool, out, template=recipe.template, tokenizer=recipe.tokenizer_folder,
                 shard_size=shard_bytes, force=force, extra_files=files,  # shard by shard, through the fused kernels
                 check=functools.partial(check_loads, trust_remote_code=src.trust_remote_code))
    run.append(ExportRecord(record.index, record.key, str(rule), finalists, str(out)))
    with Trackers.start(run, quiet=quiet) as trackers:
        trackers.exported(record, [out / name for name in files])
    return ExportResult(out, record, recipe, mergekit is not None, evaluated)
