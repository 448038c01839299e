"""The search config: typed sections that mirror the YAML file (see ``configs/zoo.yaml``).

Loading checks every key, type and range here and names the field of the first problem. What needs
the rest of the program — that the methods exist and can be searched, the strategy's options, the
task and metric names, the model folders — is checked by ``evomerge.run.preflight`` before a run
folder is created. Relative paths are resolved against the config file's folder; a run folder
records the resolved config (``dump``), which ``load`` reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import yaml

from evomerge.config.schema import dump, load, parse_yaml
from evomerge.config.sizes import parse_size
from evomerge.errors import EvomergeError

DType = Literal["float32", "float16", "bfloat16", "float64"]  # the dtypes a merge may write: the one table
DTYPE_NAMES: tuple[str, ...] = get_args(DType)  # recipes, mergekit YAML and the plan (torch dtypes) read it
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


@dataclass(frozen=True)
class SourcesConfig:
    """The base model and its fine-tunes (Hugging Face folders), and the names an export publishes them under."""

    base: Path
    models: tuple[Path, ...] = field(metadata={"nonempty": True})
    # How the model card and mergekit.yaml name the models, e.g. their hub ids ("org/model"); default: folder names.
    base_name: str | None = field(default=None, metadata={"oneline": True})
    names: tuple[str, ...] = field(default=(), metadata={"oneline": True})  # one per entry of ``models``, in its order
    allow_pickle: bool = False  # also read .bin/.pt checkpoints (tensors only, weights_only=True)
    trust_remote_code: bool = False
    # the folder whose tokenizer, chat template and generation config (eos) scoring and export use, as mergekit's
    # tokenizer_source: the base (None) or one of the models (an instruct fine-tune keeps its chat template)
    tokenizer_source: Path | None = None
    # the base's config.json fields (model_type, hidden_size, ...): the model's shape for ``search --plan`` where
    # the model folders are not on this machine; the folders' own headers win where they exist
    shape: Mapping[str, Any] | None = None

    @property
    def tokenizer_folder(self) -> Path:
        """Where scoring and export take tokenizer files, chat template and generation config from."""
        return self.tokenizer_source or self.base

    def check(self) -> tuple[str, str] | None:
        if self.tokenizer_source is not None and self.tokenizer_source not in (self.base, *self.models):
            return "tokenizer_source", ("must be the base or one of sources.models (leave it out for the base's "
                                        f"tokenizer), got {str(self.tokenizer_source)!r}")
        if self.names and len(self.names) != len(self.models):
            return "names", f"must give one name per model ({len(self.models)}), got {len(self.names)}"
        labels = self.labels()
        if len(set(labels.values())) != len(labels):
            return "names", ("must name different models differently, got "
                             f"{[labels[p] for p in (self.base, *self.models)]}")
        return None

    def labels(self) -> dict[Path, str]:
        """Model folder -> its published name: the configured name, else the folder name (with parent
        folders where two folders share a name). Never an absolute path unless configured so."""
        folders = list(dict.fromkeys((self.base, *self.models)))
        labels = dict(zip(folders, _short_names(folders), strict=True))
        if self.base_name is not None:
            labels[self.base] = self.base_name
        labels.update(zip(self.models, self.names, strict=False))
        return labels

    def repeated(self) -> tuple[str, str] | None:
        """A model listed twice, or the base among the models: the search would weigh one model as two."""
        seen = {self.base.resolve(): "sources.base"}
        for i, model in enumerate(self.models):
            other = seen.setdefault(model.resolve(), f"sources.models[{i}]")
            if other != f"sources.models[{i}]":
                return f"models[{i}]", f"is {other} again ({model}); list each fine-tune once, the base only as base"
        return None


@dataclass(frozen=True)
class GenomeConfig:
    """What the search varies: methods, layer groups, gene bounds, fixed method parameters."""

    methods: tuple[str, ...] = field(default=("task_arithmetic",), metadata={"nonempty": True})
    layer_granularity: int = field(default=1, metadata={"ge": 1})
    split_by_kind: bool = False  # separate genes for attention / mlp / other tensors
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # gene -> [low, high]
    parameters: Mapping[str, Any] = field(default_factory=dict)  # fixed global method parameters
    dtype: DType | None = None  # merged weights' dtype; None: the base's

    def check(self) -> tuple[str, str] | None:
        for key, (low, high) in self.bounds.items():
            if low > high:
                return f"bounds.{key}", f"must be [low, high] with low <= high, got {[low, high]}"
        return None


@dataclass(frozen=True)
class ScoringConfig:
    """How candidates are scored; the prompt options reach lm-eval as ``simple_evaluate`` passes them."""

    task_path: Path | None = None  # folder of lm-eval task YAMLs; None: lm-eval's own tasks
    batch_size: int = field(default=64, metadata={"ge": 1})
    num_fewshot: int | None = field(default=None, metadata={"ge": 0})  # None: each task's own
    fewshot_seed: int = 1234  # simple_evaluate's fewshot_random_seed default (lm_eval.defaults.DEFAULT_OTHER_SEED)
    apply_chat_template: bool = False  # needs a tokenizer with a chat template
    fewshot_as_multiturn: bool = False  # few-shot examples as chat turns (needs apply_chat_template)
    system_instruction: str | None = None
    # optimize on lm-eval's own tasks of well-known benchmarks (their test sets); refused by default (run.preflight)
    allow_benchmark_tasks: bool = False
    # full: every candidate on every calibration item. racing (docs/SCORING.md, "Cheap fitness"): a generation of
    # a strategy that describes its selection (cmaes, nsga2) is scored in chunks of common items, and a candidate
    # stops once it is confidently kept or not by that selection (paired differences, ``racing_z`` standard errors)
    fidelity: Literal["full", "racing"] = "full"
    chunk_items: int = field(default=64, metadata={"ge": 2})  # racing: items per chunk, all tasks together
    racing_z: float = field(default=1.5, metadata={"gt": 0})  # racing: confidence of a stop, in standard errors
    # RegMean's and Fisher's statistics come from the calibration texts: all of them (None), or at most this many
    # spread evenly over them (each task keeps its share): Fisher costs a backward pass per text and source
    statistics_texts: int | None = field(default=None, metadata={"ge": 1})

    def check(self) -> tuple[str, str] | None:
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            return "fewshot_as_multiturn", "needs apply_chat_template: true (few-shot turns exist only in a chat)"
        return None

    @property
    def prompt_options(self) -> dict[str, Any]:
        """The Scorer's keyword arguments for the prompt."""
        return {"num_fewshot": self.num_fewshot, "fewshot_seed": self.fewshot_seed,
                "apply_chat_template": self.apply_chat_template,
                "fewshot_as_multiturn": self.fewshot_as_multiturn, "system_instruction": self.system_instruction}


@dataclass(frozen=True)
class ObjectiveConfig:
    """One lm-eval task to optimize: its calibration task drives the search, its held-out task reports."""

    task: str
    heldout_task: str | None = None  # None: the calibration task again
    metric: str | None = None  # what reports, finalists and the export pick use; None: the task's first metric
    # what the strategy optimizes on calibration; None: ``metric``. A continuous one (``perplexity``: the
    # answers' log-likelihood) keeps ranking candidates whose accuracy ties
    search_metric: str | None = None
    filter: str | None = None  # None: the task's first filter
    direction: Literal["max", "min"] | None = None  # of ``metric``; None: lm-eval's higher_is_better
    weight: float = field(default=1.0, metadata={"ge": 0})  # for scalarizing strategies

    def task_for(self, split: str) -> str:
        """The task scored on ``split`` ("calibration" or "heldout")."""
        return self.task if split == "calibration" else (self.heldout_task or self.task)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "cmaes"
    options: Mapping[str, Any] = field(default_factory=dict)  # checked against the strategy's own options


@dataclass(frozen=True)
class BudgetConfig:
    max_evals: int = field(default=100, metadata={"ge": 1})
    max_minutes: float | None = field(default=None, metadata={"gt": 0})
    # stop a broken run: when the first N candidates all fail, or N in a row fail with one cause
    stop_after_failures: int = field(default=5, metadata={"ge": 1})


@dataclass(frozen=True)
class TrackerConfig:
    """An experiment tracker the run reports to (``evomerge.run.trackers``): Weights & Biases or trackio."""

    library: Literal["wandb", "trackio"]
    project: str = "evomerge"
    # the tracker run's name; None: the run's name (trackio, which resumes runs by name: with a random suffix)
    name: str | None = None
    group: str | None = None
    entity: str | None = None  # wandb: the team or user; None: the logged-in default
    tags: tuple[str, ...] = ()  # wandb
    mode: Literal["online", "offline"] | None = None  # wandb; None: WANDB_MODE, else online
    dir: Path | None = None  # wandb: the folder of its local files; None: wandb's default (./wandb)

    def check(self) -> tuple[str, str] | None:
        if self.library == "trackio":
            for name in ("entity", "tags", "mode", "dir"):
                if getattr(self, name):
                    return name, ("is a wandb option; trackio writes locally to TRACKIO_DIR (an environment variable; "
                                  "default ~/.cache/huggingface/trackio): leave it out")
        return None


@dataclass(frozen=True)
class ExecutionConfig:
    """Where candidates run. The same config gives the same log on either backend and any worker count."""

    backend: Literal["local", "ray"] = "local"
    workers: int = field(default=1, metadata={"ge": 1})
    in_flight: int = field(default=4, metadata={"ge": 1})  # L: the fixed lag that makes runs reproducible
    gpus_per_worker: float = field(default=0.0, metadata={"ge": 0})
    ray_address: str | None = None
    device: str = "cpu"  # cpu, cuda, cuda:N, mps
    threads: int | None = field(default=None, metadata={"ge": 1})  # torch threads per worker; None: 1 on CPU
    # bytes each worker may use for merging (live model, caches, sources on its GPU), e.g. "64GB"; None: from the
    # device's memory (GPU) or this host's available memory shared by the workers (CPU). See docs/MEMORY.md.
    memory_budget: str | None = None
    # experiment trackers that get every candidate, each generation's best and mean, the front, exports and
    # reports; none by default. A tracker that fails (not installed, no login) warns once and the run goes on.
    trackers: tuple[TrackerConfig, ...] = ()

    def check(self) -> tuple[str, str] | None:
        libraries = [t.library for t in self.trackers]
        if len(set(libraries)) != len(libraries):
            return "trackers", f"must name each library once, got {libraries}"
        if not DEVICE.match(self.device):
            return "device", f"must be cpu, cuda, cuda:N or mps, got {self.device!r}"
        if self.memory_budget is not None:
            try:
                parse_size(self.memory_budget)
            except EvomergeError as e:
                return "memory_budget", f"must be a size such as '64GB' or '1.5GiB' ({e})"
        return None

    @property
    def budget_bytes(self) -> int | None:
        return None if self.memory_budget is None else parse_size(self.memory_budget)


@dataclass(frozen=True)
class BaselinesConfig:
    """The grids of the fixed recipes the export and the report score beside the search (task arithmetic's λ; TIES'
    and DARE-TIES' densities, each with every λ): a smaller grid is a cheaper export, and a best fixed recipe chosen
    from fewer members. None: the standard grid of ``recipes.fixed``."""

    lambdas: tuple[float, ...] | None = field(default=None, metadata={"nonempty": True, "gt": 0})
    densities: tuple[float, ...] | None = field(default=None, metadata={"nonempty": True, "gt": 0, "le": 1})


@dataclass(frozen=True)
class SearchConfig:
    name: str
    sources: SourcesConfig
    objectives: tuple[ObjectiveConfig, ...] = field(metadata={"nonempty": True})
    seed: int = field(default=0, metadata={"ge": 0})
    genome: GenomeConfig = field(default_factory=GenomeConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)

    def check(self) -> tuple[str, str] | None:
        if sum(o.weight for o in self.objectives) <= 0:
            return "objectives", "must have weights with a positive sum"
        if self.name in ("", ".", "..") or any(sep in self.name for sep in ("/", "\\")):
            return "name", (f"must be a plain name (it names the run folder populations/<name>): no '/', '\\', '.' or "
                            f"'..'; use --run-dir to put a run elsewhere, got {self.name!r}")
        problem = self.sources.repeated()
        return None if problem is None else (f"sources.{problem[0]}", problem[1])

    @property
    def model_folders(self) -> tuple[Path, ...]:
        """Every model folder: the base first, then the sources."""
        return (self.sources.base, *self.sources.models)

    @property
    def inputs(self) -> list[tuple[str, Path]]:
        """What a run of this config reads, labelled: the model folders and the task folder (outputs stay outside)."""
        folders = [("the model folder", p) for p in self.model_folders]
        return folders + ([("the task folder", self.scoring.task_path)] if self.scoring.task_path is not None else [])

    def override(self, **changes: Any) -> "SearchConfig":
        """CLI flags win over the file: ``override(**{"budget.max_evals": 50, "seed": 1})``; None means not given."""
        cfg = self
        for key, value in changes.items():
            if value is not None:
                section, _, name = key.partition(".")
                if name:
                    value = dataclasses.replace(getattr(cfg, section), **{name: value})
                cfg = dataclasses.replace(cfg, **{section: value})
        return load(SearchConfig, dump(cfg))  # the same checks as a file's values

    def to_yaml(self) -> str:
        return yaml.safe_dump(dump(self), sort_keys=False)


def _short_names(folders: list[Path]) -> list[str]:
    """The folders' last path components, as few as tell them apart (``rev``, or ``a/final`` and ``b/final``)."""
    for depth in range(1, max(len(f.parts) for f in folders)):
        names = [Path(*f.parts[-depth:]).as_posix() for f in folders]
        if len(set(names)) == len(names):
            return names
    return [f.as_posix() for f in folders]


def load_config(path: str | Path) -> SearchConfig:
    """Read and check a search config file (relative paths resolved against its folder); a mergekit-evolve
    config (top-level ``genome:`` and ``tasks:``) is read as its native equivalent (``config.mergekit_evolve``)."""
    path = Path(path)
    data = read_yaml_mapping(path, what="config")
    from evomerge.config import mergekit_evolve  # it builds on this module

    if mergekit_evolve.is_mergekit_evolve(data):
        return mergekit_evolve.load_mergekit_evolve(path, data)
    data.setdefault("name", path.stem)
    return load(SearchConfig, data, what="config", root=path.parent.resolve())


def config_from_yaml(text: str) -> SearchConfig:
    """A run folder's resolved config."""
    return load(SearchConfig, parse_yaml(text, "run config"), what="run config")


def read_yaml_mapping(path: Path, *, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; a missing file or a syntax error is one line naming the place."""
    if not path.is_file():
        raise EvomergeError(f"{what} file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EvomergeError(f"{what} {path} is not UTF-8 text: give a YAML file") from None
    data = parse_yaml(text, f"{what} {path}")
    if not isinstance(data, dict):
        raise EvomergeError(f"{what} {path} must be a YAML mapping of keys to values")
    return data
