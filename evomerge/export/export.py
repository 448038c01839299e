"""Export: a chosen candidate of a run -> a Hugging Face model folder with card and recipes.

The folder holds the merged weights (sharded safetensors + index when large), the base's config,
generation config and tokenizer files, and:
- ``README.md``: the model card (card.py);
- ``evomerge_recipe.yaml``: the candidate's recipe with absolute paths; ``evomerge merge
  evomerge_recipe.yaml --out X`` rebuilds the same tensors;
- ``mergekit.yaml``: only when the recipe maps faithfully onto mergekit — one method with the same
  values in every layer group, a method both tools share and parameters mergekit knows. A per-layer
  genome gets none: mergekit would need one slice per layer, and how it treats the embeddings,
  final norm and lm_head of sliced merges has not been verified against evomerge's groups, so the
  card says why and points at the evomerge recipe instead.

Nothing is written unless everything succeeded; the folder is built beside ``--out`` and renamed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import EvomergeError
from evomerge.export.card import model_card
from evomerge.export.evaluator import Evaluator, ExecutorFactory, check_sources
from evomerge.export.finalists import DEFAULT_FINALISTS, analyze, find_candidate, parse_pick
from evomerge.merge.plan import MergePlan
from evomerge.merge.recipe import MERGEKIT_METHODS, Recipe
from evomerge.merge.registry import get_method
from evomerge.run.log import RunLog
from evomerge.sources.pool import SourcePool
from evomerge.sources.writer import DEFAULT_SHARD_SIZE, check_output_folder, parse_size, write_model_folder

# Parameter names mergekit's methods understand (evomerge spelling -> mergekit spelling).
MERGEKIT_NAMES = {"weight": "weight", "density": "density", "lam": "lambda", "normalize": "normalize",
                  "epsilon": "epsilon", "gamma": "gamma", "t": "t", "rescale": "rescale"}


@dataclass(frozen=True)
class ExportResult:
    out: Path
    record: dict[str, Any]  # the exported candidate's log record
    recipe: Recipe
    mergekit: bool
    evaluated: int  # evaluations this export had to run (0 when the log had them all)


def export_candidate(
    run_dir: str | Path,
    out: str | Path,
    *,
    pick: str | int = "mean",
    finalists: int = DEFAULT_FINALISTS,
    force: bool = False,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    executor_factory: ExecutorFactory | None = None,
    quiet: bool = False,
) -> ExportResult:
    out = Path(out).resolve()
    check_output_folder(out, force)
    shard_bytes = parse_size(shard_size)
    rule = parse_pick(pick)
    run = RunLog.open(Path(run_dir))
    cfg = run.config()
    if rule == "mean" and finalists < 1:
        raise EvomergeError("--pick mean needs held-out finalists: use --rescore-heldout 1 or more, or --pick knee / an index")
    if isinstance(rule, int):
        find_candidate(run, rule)  # a wrong index is refused before anything is scored
    with Evaluator(run, executor_factory, quiet=quiet) as evaluator:
        analysis = analyze(run, evaluator, finalists=finalists)
        record = analysis.pick(rule)
        evaluated = evaluator.evaluated
    if not evaluated:
        check_sources(run)  # the evaluator checked them if it started a worker

    from evomerge.run.search import genome_space

    recipe = genome_space(cfg).to_recipe(record["x"])
    recipe.validate()
    pool = SourcePool.load(cfg.base, list(cfg.models), allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    tensors = MergePlan.build(recipe, pool).materialize(pool)
    out_dtype = recipe.dtype or _dtype_name(next(t for t in tensors.values() if t.is_floating_point()).dtype)
    mergekit, why_not = mergekit_yaml(recipe, out_dtype)
    command = ["evomerge", "export", str(run.root.resolve()), "--out", str(out), "--pick", str(record["index"]),
               "--rescore-heldout", str(finalists)]
    if shard_bytes not in (DEFAULT_SHARD_SIZE, parse_size("5GB")):
        command += ["--shard-size", str(shard_size)]
    card = model_card(analysis, record, recipe, mergekit_note=why_not,
                      export_command=shlex.join(command), pick=str(rule))
    files = {"README.md": card, "evomerge_recipe.yaml": recipe.to_yaml()}
    if mergekit is not None:
        files["mergekit.yaml"] = mergekit
    write_model_folder(tensors, out, template=recipe.template, shard_size=shard_bytes, force=force, extra_files=files)
    run.append({"type": "export", "index": record["index"], "key": record["key"], "pick": str(rule),
                "finalists": finalists, "out": str(out)})
    return ExportResult(out, record, recipe, mergekit is not None, evaluated)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def uniform_spec(recipe: Recipe) -> bool:
    return all(spec == recipe.default for spec in recipe.groups.values())


def mergekit_yaml(recipe: Recipe, out_dtype: str) -> tuple[str | None, str]:
    """(mergekit YAML, note) — or (None, why there is none)."""
    distinct = []
    for spec in [recipe.default, *recipe.groups.values()]:
        if spec not in distinct:
            distinct.append(spec)
    if len(distinct) > 1:
        return None, (
            f"no mergekit.yaml: the genome sets different values in different layer groups ({len(distinct)} distinct "
            "settings); mergekit could only express that with one slice per layer, whose handling of embeddings, final "
            "norm and lm_head has not been verified to match evomerge's groups. Rebuild with evomerge_recipe.yaml."
        )
    spec = recipe.default
    method = get_method(spec.method)
    if method.name not in MERGEKIT_METHODS:
        return None, f"no mergekit.yaml: mergekit has no method matching evomerge's '{method.name}'."
    params = {**{k: v for k, v in method.globals.items() if isinstance(v, (bool, int, float))}, **spec.params}
    unknown = sorted(k for k in [*params, *spec.source_params] if k not in MERGEKIT_NAMES)
    if unknown:
        return None, f"no mergekit.yaml: parameter '{unknown[0]}' of '{method.name}' has no mergekit equivalent."
    models = [{"model": str(p), "parameters": {MERGEKIT_NAMES[k]: float(v[i]) for k, v in spec.source_params.items()}}
              for i, p in enumerate(recipe.sources)]
    data: dict[str, Any] = {"merge_method": method.name}
    if method.needs_base and recipe.base is not None:
        data["base_model"] = str(recipe.base)
    data["models"] = models
    data["parameters"] = {MERGEKIT_NAMES[k]: v for k, v in params.items()}
    data["dtype"] = "float32"
    data["out_dtype"] = out_dtype
    note = "mergekit.yaml reproduces this merge with `mergekit-yaml mergekit.yaml OUT` (one method, the same values in every layer group)."
    if method.random:
        note += (" mergekit draws its own random DARE masks, so its result is another sample of the same recipe, not"
                 " bit-identical to this model; evomerge_recipe.yaml rebuilds it exactly.")
    header = "# mergekit config equivalent to evomerge_recipe.yaml (written by evomerge export)\n"
    return header + yaml.safe_dump(data, sort_keys=False), note

