"""mergekit-evolve's genome configs (top-level ``genome:`` and ``tasks:``), read as evomerge search configs.

mergekit-evolve, mergekit's deprecated evolutionary merge tool, reads one YAML file: ``genome`` (the models, one merge
method, layer groups, tensor filters) and ``tasks`` (lm-eval tasks, each with a weight and a ``metric,filter`` key),
plus a few prompt options. Its users keep such files, so ``evomerge search`` accepts them as they are: each field maps
onto a section of :class:`~evomerge.config.search.SearchConfig`, or is refused in one line naming it (what evomerge
cannot do the same way), or is ignored with a one-line warning saying what evomerge does instead. Its tasks become
objectives with their weights; the scalarizing strategies (``cmaes``, as mergekit-evolve) rank candidates by the
weighted mean, which orders them as mergekit-evolve's weighted sum does. ``convert_text`` writes the native config,
commented field by field. The field-by-field table for users is docs/MIGRATING.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from evomerge.config.schema import dump, fields_of, load
from evomerge.config.search import SearchConfig, read_yaml_mapping
from evomerge.errors import EvomergeError

WHAT = "mergekit-evolve config"
# mergekit-evolve's methods -> evomerge's; ``linear`` is the normalized task arithmetic below (the same average)
METHODS = {"task_arithmetic": "task_arithmetic", "ties": "ties", "dare_ties": "dare_ties", "linear": "task_arithmetic"}
NORMALIZED_BY_DEFAULT = ("ties", "dare_ties", "linear")  # mergekit-evolve's normalize when the config leaves it out
KIND_FILTERS = {"self_attn", "mlp"}  # the filters that are evomerge's split by kind (attention, mlp, the rest)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the Hugging Face hub spells a repository


@dataclass(frozen=True)
class EvolveGenome:
    """mergekit-evolve's ``genome:`` section (its ModelGenomeDefinition), field for field."""

    models: tuple[Any, ...] = field(metadata={"nonempty": True})  # model references: "path", "org/model@rev", mappings
    merge_method: str
    base_model: Any = None
    tokenizer_source: str | None = None
    layer_granularity: int = field(default=0, metadata={"ge": 0})  # 0: all layers one group
    normalize: bool | None = None
    allow_negative_weights: bool = False
    filters: tuple[str, ...] | None = None
    smooth: bool = False


@dataclass(frozen=True)
class EvolveTask:
    """One entry of ``tasks:`` (a bare name is ``{name: NAME}``)."""

    name: str
    weight: float = field(default=1.0, metadata={"ge": 0})
    metric: str = "acc,none"  # lm-eval's results key: metric, comma, filter


@dataclass(frozen=True)
class EvolveConfig:
    """A mergekit-evolve config file (its EvolMergeConfiguration), field for field, with its defaults."""

    genome: EvolveGenome
    tasks: tuple[Any, ...] = field(metadata={"nonempty": True})
    limit: int | None = field(default=None, metadata={"ge": 1})
    num_fewshot: int | None = field(default=None, metadata={"ge": 0})
    shuffle: bool = False
    random_init: bool = False
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True


def is_mergekit_evolve(data: Mapping[str, Any]) -> bool:
    """A mergekit-evolve config by its shape: ``genome:`` and ``tasks:`` at the top (a native one has no ``tasks``)."""
    return "genome" in data and "tasks" in data


def load_mergekit_evolve(path: Path, data: Mapping[str, Any]) -> SearchConfig:
    """The native config of a mergekit-evolve file; each field evomerge ignores is one warning line on stderr, and
    several tasks one note saying how to search their Pareto front instead of their weighted score."""
    cfg, notes = read_mergekit_evolve(path, data)
    _warn(notes)
    return cfg


def _warn(notes: list[str]) -> None:
    for note in notes:
        print(f"evomerge: {note}", file=sys.stderr)


def read_mergekit_evolve(path: Path, data: Mapping[str, Any]) -> tuple[SearchConfig, list[str]]:
    """(native config, warnings) of the mergekit-evolve file ``path`` holding ``data``; refusals raise EvomergeError."""
    cfg, notes, _ = _read(path, data)
    return cfg, notes


def _read(path: Path, data: Mapping[str, Any]) -> tuple[SearchConfig, list[str], dict[str, str]]:
    """(native config, warnings, the model folders found next to the config -> their paths as written there)."""
    evolve = load(EvolveConfig, data, what=WHAT)
    notes = _refuse_or_note(evolve)
    written: dict[str, str] = {}
    sources = _sources(evolve.genome, path.parent, written)
    native = {
        "name": path.stem,
        "sources": sources,
        "genome": _genome(evolve.genome, Path(sources["base"]), notes),
        "scoring": {"num_fewshot": evolve.num_fewshot, "apply_chat_template": evolve.apply_chat_template,
                    "fewshot_as_multiturn": evolve.fewshot_as_multiturn},
        "objectives": [_objective(task, i) for i, task in enumerate(evolve.tasks)],
        "strategy": {"name": "cmaes"},
    }
    return load(SearchConfig, native, what=f"{WHAT} {path}"), notes, written


def _refuse_or_note(evolve: EvolveConfig) -> list[str]:
    """The fields evomerge cannot honour: refused when the result would mislead, else one note each."""
    if evolve.limit is not None:
        _refuse("limit", "evomerge scores every document of a task; make a smaller calibration task for the search and "
                "keep the full one as its objective's heldout_task (convert the file: evomerge config convert)")
    notes = []
    if evolve.genome.smooth:
        notes.append(_ignored("genome.smooth", "evomerge gives each layer group its own genes, constant within the "
                              "group (no interpolation between groups); a smaller layer_granularity gives finer steps"))
    if evolve.random_init:
        notes.append(_ignored("random_init", "evomerge's CMA-ES starts at the best of its seed points (the fixed "
                              "recipes and the box centre); strategy 'random' samples uniformly instead"))
    if len(evolve.tasks) > 1:
        notes.append(f"note: the {len(evolve.tasks)} tasks are one weighted score, as mergekit-evolve scored them "
                     "(strategy cmaes); for their Pareto front, set strategy.name: nsga2 in the native config "
                     "(evomerge config convert)")
    if evolve.shuffle:
        notes.append(_ignored("shuffle", "evomerge scores every document of each task, so their order changes no "
                              "score; few-shot examples are drawn with scoring.fewshot_seed"))
    return notes


def _ignored(field_name: str, instead: str) -> str:
    return f"warning: {WHAT} field '{field_name}' ignored: {instead}"


def _refuse(field_name: str, why: str) -> None:
    raise EvomergeError(f"{WHAT} field '{field_name}' is not supported: {why}")


def _sources(genome: EvolveGenome, root: Path, written: dict[str, str]) -> dict[str, Any]:
    """Model folders (found here, offline) and, where the config names hub ids, those ids as the published names."""
    models = [_model(ref, root, f"genome.models[{i}]", written) for i, ref in enumerate(genome.models)]
    if genome.base_model is None:  # mergekit-evolve's linear then averages whole models, the base among them
        _refuse("genome.base_model", "evomerge merges task vectors around a base, which is never one of the searched "
                "models; name the model the others were fine-tuned from as genome.base_model")
    base = _model(genome.base_model, root, "genome.base_model", written)
    named = any(hub_id for _, hub_id in (base, *models))
    return {
        "base": str(base[0]),
        "models": [str(folder) for folder, _ in models],
        "base_name": base[1],
        "names": [hub_id or folder.name for folder, hub_id in models] if named else [],
        "tokenizer_source": _tokenizer_source(genome, base, models, root, written),
    }


def _model(ref: Any, root: Path, where: str, written: dict[str, str]) -> tuple[Path, str | None]:
    """(local folder, hub id or None) of one model reference. As in mergekit, a folder that exists (next to the
    config, or from here) is a folder; else an ``owner/name`` is a hub id, found in the local Hugging Face cache.
    A folder found next to the config goes into ``written`` with its path as written."""
    text, revision = _reference(ref, where)
    if (root / text).is_dir():
        folder = (root / text).resolve()
        written.setdefault(str(folder), text)
        return folder, None
    if Path(text).expanduser().is_dir():
        return Path(text).expanduser().resolve(), None
    hub_id = HUB_ID.match(text) is not None
    cached = _hub_cache(text, revision) if hub_id else None
    if cached is None:
        cache = " nor in the Hugging Face cache" if hub_id else ""
        raise EvomergeError(f"{WHAT} field '{where}': model '{text}' is not a folder next to the config or here"
                            f"{cache}; evomerge runs offline: download it first (huggingface-cli download) or write "
                            "its folder")
    return cached, text


def _reference(ref: Any, where: str) -> tuple[str, str | None]:
    """(path or hub id, revision) of a mergekit model reference: ``path[@revision]`` or its mapping form."""
    if isinstance(ref, Mapping):
        extra = sorted(set(ref) - {"model", "lora", "override_architecture"})
        if extra:
            raise EvomergeError(f"unknown field '{extra[0]}' in {WHAT} field '{where}' (allowed: model, lora, "
                                "override_architecture)")
        if ref.get("override_architecture"):
            _refuse(f"{where}.override_architecture", "evomerge reads each folder's own config.json; edit its "
                    "architectures there")
        if ref.get("lora"):
            _refuse(f"{where}.lora", "evomerge merges full checkpoints; merge the LoRA into its model first "
                    "(mergekit or peft) and name that folder")
        model = ref.get("model")
        if isinstance(model, Mapping):
            return _reference_text(model.get("path"), where), model.get("revision")
        ref = model
    text = _reference_text(ref, where)
    if "+" in text:
        _refuse(where, f"'{text}' names a LoRA ('+'); evomerge merges full checkpoints: merge the LoRA into its model "
                "first (mergekit or peft) and name that folder")
    name, _, revision = text.partition("@")
    return name, revision or None


def _reference_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise EvomergeError(f"{WHAT} field '{where}' must be a model path or hub id, got {value!r}")
    return value


def _hub_cache(repo_id: str, revision: str | None) -> Path | None:
    """The folder of a hub model already in the local Hugging Face cache (as mergekit-evolve downloaded it), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (OSError, ValueError):  # not in the cache (or not a valid repository id): the caller says what to do
        return None


def _tokenizer_source(genome: EvolveGenome, base: tuple[Path, str | None], models: list[tuple[Path, str | None]],
                      root: Path, written: dict[str, str]) -> str | None:
    """evomerge takes the tokenizer of one folder: the base (``base`` or none) or one of the models."""
    source = genome.tokenizer_source
    if source is None or source == "base":
        return None
    if source == "union":
        _refuse("genome.tokenizer_source", "evomerge merges models that share one vocabulary and takes the tokenizer "
                "of one folder; name the base or one of the models")
    folder, _ = _model(source, root, "genome.tokenizer_source", written)
    if folder not in (base[0], *(f for f, _ in models)):
        _refuse("genome.tokenizer_source", f"'{source}' is neither the base nor one of genome.models; evomerge takes "
                "the tokenizer of one of the merged folders")
    return None if folder == base[0] else str(folder)


def _genome(genome: EvolveGenome, base: Path, notes: list[str]) -> dict[str, Any]:
    method = genome.merge_method
    if method == "slerp":
        _refuse("genome.merge_method", "mergekit-evolve's slerp picks the two heaviest models per layer group; "
                "evomerge searches task-vector methods: use task_arithmetic, ties or dare_ties")
    if method not in METHODS:
        raise EvomergeError(f"{WHAT} field 'genome.merge_method' must be one of {', '.join([*METHODS, 'slerp'])}, "
                            f"got {method!r}")
    normalize = genome.normalize if genome.normalize is not None else method in NORMALIZED_BY_DEFAULT
    if method == "linear" and not normalize:
        _refuse("genome.normalize", "evomerge's linear merge is normalized task arithmetic (the weighted average); an "
                "unnormalized weighted sum of whole models has no task-vector equivalent")
    if method == "linear":
        notes.append(f"warning: {WHAT} field 'genome.merge_method' linear is searched as task_arithmetic with "
                     "normalize: true (the same weighted average of the models)")
    filters = tuple(genome.filters or ())
    if filters and set(filters) != KIND_FILTERS:
        _refuse("genome.filters", f"evomerge splits a layer's genes by kind (attention, mlp, the rest) and takes no "
                f"other tensor filters; use [{', '.join(sorted(KIND_FILTERS))}] or leave filters out, "
                f"got {list(filters)}")
    low = -1.0 if genome.allow_negative_weights else 0.0
    return {
        "methods": [METHODS[method]],
        "layer_granularity": genome.layer_granularity or _layer_count(base),
        "split_by_kind": bool(filters),
        "bounds": {"weight": [low, 1.0]},
        "parameters": {"normalize": normalize},
    }


def _layer_count(base: Path) -> int:
    """Decoder layers of the base, as mergekit-evolve counts them (``num_hidden_layers`` of its transformers config)."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(base, local_files_only=True).num_hidden_layers)
    except (OSError, ValueError, AttributeError) as e:  # no readable layer count: say which field needs a number
        raise EvomergeError(f"{WHAT} field 'genome.layer_granularity' is 0 (one group of all layers) but the layer "
                            f"count of {base} cannot be read ({type(e).__name__}); write the number of layers"
                            ) from None


def _objective(entry: Any, index: int) -> dict[str, Any]:
    where = f"tasks[{index}]"
    task = load(EvolveTask, {"name": entry} if isinstance(entry, str) else entry, what=WHAT, where=where)
    metric, _, filter_name = task.metric.partition(",")
    if not metric:
        raise EvomergeError(f"{WHAT} field '{where}.metric' must be 'metric,filter' as lm-eval reports it (e.g. "
                            f"'acc,none'), got {task.metric!r}")
    return {"task": task.name, "metric": metric, "filter": filter_name or None, "weight": task.weight}


# -- the native file, commented field by field ---------------------------------------------------------------------

COMMENTS = {
    "name": "the run folder's default name (populations/<name>)",
    "seed": "mergekit-evolve's --random-seed (evomerge search --seed)",
    "sources.base": "genome.base_model",
    "sources.models": "genome.models, as local folders: evomerge runs offline",
    "sources.base_name": "how the model card and mergekit.yaml name the base (its hub id, if written as one)",
    "sources.names": "one per model, in order: the hub ids as written in genome.models; [] = folder names",
    "sources.allow_pickle": "also read .bin/.pt checkpoints (tensors only, weights_only=True)",
    "sources.trust_remote_code": "mergekit-evolve's --trust-remote-code",
    "sources.tokenizer_source": "genome.tokenizer_source: the tokenizer and chat template's folder; null = the base",
    "sources.shape": "the base's config.json fields, for `search --plan` without the model folders",
    "genome.methods": "genome.merge_method (linear: task_arithmetic with normalize: true, the same average)",
    "genome.layer_granularity": "genome.layer_granularity: layers per group (its 0, one group, is the layer count)",
    "genome.split_by_kind": "genome.filters [mlp, self_attn]: separate genes for attention / mlp / other tensors",
    "genome.bounds": "gene ranges; weight >= 0 unless allow_negative_weights; density: the method's own [0.1, 1.0]",
    "genome.parameters": "genome.normalize (mergekit-evolve's default: true for ties, dare_ties and linear)",
    "genome.dtype": "merged weights' dtype; null = the base's (mergekit-evolve always merged in bfloat16)",
    "scoring.task_path": "folder of lm-eval task YAMLs (mergekit-evolve's --task-search-path); null = lm-eval's own",
    "scoring.batch_size": "mergekit-evolve's --batch-size",
    "scoring.num_fewshot": "num_fewshot; null = each task's own",
    "scoring.fewshot_seed": "seed of the few-shot sampler (lm-eval's simple_evaluate default)",
    "scoring.apply_chat_template": "apply_chat_template (mergekit-evolve's default: true)",
    "scoring.fewshot_as_multiturn": "fewshot_as_multiturn (mergekit-evolve's default: true)",
    "scoring.system_instruction": "a system instruction before every prompt",
    "scoring.allow_benchmark_tasks": "optimize on lm-eval's benchmark test sets (mergekit-evolve's "
                                     "--i-understand-the-depths-of-the-evils-i-am-unleashing)",
    "scoring.fidelity": "full: every candidate on every item (as mergekit-evolve); racing: cmaes and nsga2 generations "
                        "scored in chunks, a candidate stops once clearly kept or not (its limit, adaptive)",
    "scoring.chunk_items": "racing: items per chunk, all tasks together",
    "scoring.racing_z": "racing: standard errors that make a stop confident",
    "scoring.statistics_texts": "calibration texts of RegMean's and Fisher's statistics (null: all)",
    "objectives": "tasks: one each, metric,filter split; cmaes ranks by the weighted mean (mergekit-evolve's weighted "
                  "sum, scaled)\n  # heldout_task: a task the search never sees, scored for the finalists "
                  "(null: task again)",
    "strategy.name": "CMA-ES as mergekit-evolve; nsga2 searches the tasks' Pareto front instead of one weighted score",
    "strategy.options": "cmaes: sigma0 (--sigma0, default 1/6), popsize (--force-population-size)",
    "budget.max_evals": "mergekit-evolve's --max-fevals",
    "budget.max_minutes": "mergekit-evolve's --timeout (in minutes here); null = no time limit",
    "budget.stop_after_failures": "stop a broken run: the first N candidates, or N in a row, failing",
    "execution.backend": "local (one worker in this process) or ray (several, GPUs: --num-gpus)",
    "execution.workers": "workers (ray); mergekit-evolve's --num-gpus",
    "execution.in_flight": "L: the fixed lag that makes runs identical for any worker count",
    "execution.gpus_per_worker": "ray: GPUs per worker actor",
    "execution.ray_address": "ray: join this cluster ('auto' or host:port)",
    "execution.device": "cpu, cuda, cuda:N or mps (mergekit-evolve's --merge-cuda: cuda)",
    "execution.threads": "torch threads per worker; null = 1 on CPU",
    "execution.memory_budget": "bytes per worker for merging, e.g. 8GB; null = from the device or this host",
    "execution.trackers": "--wandb: [{library: wandb, project: P, entity: E}] (or trackio); [] = none",
    "baselines.lambdas": "λ grid of the report's task arithmetic, TIES and DARE-TIES; null = the standard one",
    "baselines.densities": "densities of the report's TIES and DARE-TIES grids; null = the standard ones",
}
COMMENT_COLUMN = 33
ORDER = ("name", "seed", "sources", "genome", "scoring", "objectives", "strategy", "budget", "execution",
         "baselines")  # zoo.yaml's


def convert_text(path: Path, task_path: Path | None = None) -> str:
    """The native equivalent of the mergekit-evolve file ``path`` as commented YAML, paths relative to its folder."""
    data = read_yaml_mapping(path, what="config")
    if not is_mergekit_evolve(data):
        raise EvomergeError(f"{path} is not a mergekit-evolve config (it needs top-level genome: and tasks:)")
    cfg, notes, written = _read(path, data)
    _warn(notes)
    if task_path is not None:
        cfg = cfg.override(**{"scoring.task_path": task_path.resolve()})
        written.setdefault(str(task_path.resolve()), os.path.relpath(task_path.absolute(), path.parent.absolute()))
    native = _relative(dump(cfg), path.parent.resolve(), written)
    native = {key: native[key] for key in sorted(native, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))}
    lines = [f"# Converted from the mergekit-evolve config {path.name} by `evomerge config convert` "
             "(docs/MIGRATING.md).",
             f"# Relative paths are relative to the folder of {path.name}: keep this file next to it.",
             *(f"# {n}" for n in notes), ""]
    for key, value in native.items():
        section = getattr(cfg, key)
        if key == "objectives":
            lines += [_line(f"{key}:", "", COMMENTS[key]), *(f"  - {_flow(o)}" for o in value), ""]
        elif dataclasses.is_dataclass(section):
            lines.append(f"{key}:")
            lines += [_line(f"  {name}:", value[name], COMMENTS.get(f"{key}.{name}", ""))
                      for name in fields_of(type(section))]
            lines.append("")
        else:
            lines += [_line(f"{key}:", value, COMMENTS.get(key, ""))] + ([""] if key == "seed" else [])
    return "\n".join(lines).rstrip() + "\n"


def _line(head: str, value: Any, comment: str) -> str:
    """``head value  # comment``; a list too long for the comment column goes below, one item a line."""
    text = f"{head} {_flow(value)}" if value != "" else head
    if isinstance(value, list) and value and len(text) >= COMMENT_COLUMN - 1:
        indent = " " * (len(head) - len(head.lstrip()) + 2)
        return "\n".join([_line(head, "", comment), *(f"{indent}- {_flow(item)}" for item in value)])
    return f"{text.ljust(COMMENT_COLUMN - 1)} # {comment}" if comment else text


def _flow(value: Any) -> str:
    """One YAML value on one line (flow style)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).removesuffix("\n...\n").strip()


def _relative(data: dict[str, Any], root: Path, written: dict[str, str]) -> dict[str, Any]:
    """The config's paths as the converted file next to the original reads them back: as written in the original
    where they were, else relative to its folder, else absolute."""
    def rel(p: str | None) -> str | None:
        if p is None:
            return None
        for text in (written.get(p), os.path.relpath(p, root)):
            if text is not None and (root / text).resolve() == Path(p):
                return Path(text).as_posix()
        return p

    src, scoring = data["sources"], data["scoring"]
    src.update(base=rel(src["base"]), models=[rel(m) for m in src["models"]],
               tokenizer_source=rel(src["tokenizer_source"]))
    scoring["task_path"] = rel(scoring["task_path"])
    return data
