"""The search config: one YAML file, validated completely before anything runs.

Every mistake names the field (``budget.max_evals``) and says what is expected. Relative paths
are resolved against the config file's folder; the resolved form is what a run folder records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from evomerge.errors import EvomergeError
from evomerge.merge.recipe import read_yaml_mapping

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Objective:
    task: str
    heldout_task: str | None = None
    metric: str | None = None  # default: the task's primary (first) metric
    direction: str | None = None  # "max" | "min"; default: lm-eval's higher_is_better
    weight: float = 1.0


@dataclass(frozen=True)
class SearchConfig:
    name: str
    base: Path
    models: tuple[Path, ...]
    objectives: tuple[Objective, ...]
    task_path: Path | None = None
    methods: tuple[str, ...] = ("task_arithmetic",)
    layer_granularity: int = 1
    split_by_kind: bool = False
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    strategy: str = "cmaes"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    max_evals: int = 100
    max_minutes: float | None = None
    backend: str = "local"
    workers: int = 1
    in_flight: int = 4
    gpus_per_worker: float = 0.0
    ray_address: str | None = None
    device: str = "cpu"
    threads: int | None = None
    merge_cache: bool = True
    batch_size: int = 64
    allow_pickle: bool = False
    trust_remote_code: bool = False
    seed: int = 0

    def with_overrides(self, **kw: Any) -> "SearchConfig":
        """CLI flags win over the file; None means 'not given'."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["base"] = str(self.base)
        data["models"] = [str(m) for m in self.models]
        data["task_path"] = str(self.task_path) if self.task_path else None
        data["objectives"] = [asdict(o) for o in self.objectives]
        data["methods"] = list(self.methods)
        data["bounds"] = {k: list(v) for k, v in self.bounds.items()}
        data["parameters"] = dict(self.parameters)
        data["strategy_options"] = dict(self.strategy_options)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchConfig":
        """Inverse of to_dict (a run folder's resolved config)."""
        data = dict(data)
        data["base"] = Path(data["base"])
        data["models"] = tuple(Path(m) for m in data["models"])
        data["task_path"] = Path(data["task_path"]) if data.get("task_path") else None
        data["objectives"] = tuple(Objective(**o) for o in data["objectives"])
        data["methods"] = tuple(data["methods"])
        data["bounds"] = {k: tuple(v) for k, v in data["bounds"].items()}
        return cls(**data)


SECTIONS = {
    "name", "sources", "genome", "objectives", "scoring", "strategy", "budget", "execution", "seed",
}


def load_config(path: str | Path) -> SearchConfig:
    path = Path(path)
    raw = read_yaml_mapping(path, what="config")
    root = path.parent
    _only(raw, SECTIONS, "config")
    src = _section(raw, "sources", required=True)
    _only(src, {"base", "models", "allow_pickle", "trust_remote_code"}, "sources")
    gen = _section(raw, "genome")
    _only(gen, {"methods", "method", "layer_granularity", "split_by_kind", "bounds", "parameters", "dtype"}, "genome")
    sco = _section(raw, "scoring")
    _only(sco, {"task_path", "batch_size"}, "scoring")
    strat = _section(raw, "strategy")
    _only(strat, {"name", "options"}, "strategy")
    bud = _section(raw, "budget")
    _only(bud, {"max_evals", "max_minutes"}, "budget")
    exe = _section(raw, "execution")
    _only(exe, {"backend", "workers", "in_flight", "gpus_per_worker", "ray_address", "device", "threads", "merge_cache"}, "execution")

    models = src.get("models")
    if not isinstance(models, list) or not models:
        raise EvomergeError("config field 'sources.models' must be a non-empty list of model folders")
    methods = gen.get("methods", [gen["method"]] if "method" in gen else ["task_arithmetic"])
    if isinstance(methods, str):
        methods = [methods]
    cfg = SearchConfig(
        name=_str(raw.get("name", path.stem), "name"),
        base=_path(src.get("base"), root, "sources.base"),
        models=tuple(_path(m, root, "sources.models[]") for m in models),
        objectives=_objectives(raw.get("objectives")),
        task_path=_path(sco["task_path"], root, "scoring.task_path") if sco.get("task_path") else None,
        methods=tuple(str(m) for m in methods),
        layer_granularity=_int(gen.get("layer_granularity", 1), "genome.layer_granularity", 1),
        split_by_kind=_bool(gen.get("split_by_kind", False), "genome.split_by_kind"),
        bounds=_bounds(gen.get("bounds") or {}),
        parameters=dict(gen.get("parameters") or {}),
        dtype=gen.get("dtype"),
        strategy=_str(strat.get("name", "cmaes"), "strategy.name"),
        strategy_options=dict(strat.get("options") or {}),
        max_evals=_int(bud.get("max_evals", 100), "budget.max_evals", 1),
        max_minutes=_float(bud["max_minutes"], "budget.max_minutes") if bud.get("max_minutes") is not None else None,
        backend=_choice(exe.get("backend", "local"), BACKENDS, "execution.backend"),
        workers=_int(exe.get("workers", 1), "execution.workers", 1),
        in_flight=_int(exe.get("in_flight", 4), "execution.in_flight", 1),
        gpus_per_worker=_float(exe.get("gpus_per_worker", 0.0), "execution.gpus_per_worker"),
        ray_address=exe.get("ray_address"),
        device=_str(exe.get("device", "cpu"), "execution.device"),
        threads=_int(exe["threads"], "execution.threads", 1) if exe.get("threads") is not None else None,
        merge_cache=_bool(exe.get("merge_cache", True), "execution.merge_cache"),
        batch_size=_int(sco.get("batch_size", 64), "scoring.batch_size", 1),
        allow_pickle=_bool(src.get("allow_pickle", False), "sources.allow_pickle"),
        trust_remote_code=_bool(src.get("trust_remote_code", False), "sources.trust_remote_code"),
        seed=_int(raw.get("seed", 0), "seed", 0),
    )
    validate(cfg)
    return cfg


def validate(cfg: SearchConfig) -> None:
    """Checks that hold for a config from a file, a run folder, or CLI overrides."""
    from evomerge.merge.registry import get_method
    from evomerge.strategies import strategy_names

    for m in cfg.methods:
        get_method(m)
    if cfg.strategy not in strategy_names():
        raise EvomergeError(f"config field 'strategy.name': unknown strategy '{cfg.strategy}' (known: {', '.join(strategy_names())})")
    if cfg.backend not in BACKENDS:
        raise EvomergeError(f"config field 'execution.backend' must be one of {', '.join(BACKENDS)}, got '{cfg.backend}'")
    for field_name, value in (("budget.max_evals", cfg.max_evals), ("execution.workers", cfg.workers), ("execution.in_flight", cfg.in_flight)):
        if value < 1:
            raise EvomergeError(f"config field '{field_name}' must be >= 1, got {value}")
    for p, where in [(cfg.base, "sources.base"), *((m, "sources.models") for m in cfg.models)]:
        if not p.is_dir():
            raise EvomergeError(f"config field '{where}': model folder not found: {p}")
    if cfg.task_path is not None and not cfg.task_path.is_dir():
        raise EvomergeError(f"config field 'scoring.task_path': folder not found: {cfg.task_path}")


def _objectives(value: Any) -> tuple[Objective, ...]:
    if not isinstance(value, list) or not value:
        raise EvomergeError("config field 'objectives' must be a non-empty list, e.g. '- {task: my_task, heldout_task: my_task_heldout}'")
    out = []
    for i, item in enumerate(value):
        where = f"objectives[{i}]"
        if not isinstance(item, dict) or "task" not in item:
            raise EvomergeError(f"config field '{where}' needs at least 'task'")
        _only(item, {"task", "heldout_task", "metric", "direction", "weight"}, where)
        direction = item.get("direction")
        if direction is not None:
            _choice(direction, ("max", "min"), f"{where}.direction")
        out.append(Objective(
            task=_str(item["task"], f"{where}.task"),
            heldout_task=item.get("heldout_task"),
            metric=item.get("metric"),
            direction=direction,
            weight=_float(item.get("weight", 1.0), f"{where}.weight"),
        ))
    return tuple(out)


def _bounds(value: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    out = {}
    for key, pair in value.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)) or pair[0] > pair[1]:
            raise EvomergeError(f"config field 'genome.bounds.{key}' must be [low, high] with low <= high, got {pair!r}")
        out[str(key)] = (float(pair[0]), float(pair[1]))
    return out


def _section(raw: Mapping[str, Any], key: str, required: bool = False) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        if required:
            raise EvomergeError(f"config has no '{key}' section")
        return {}
    if not isinstance(value, dict):
        raise EvomergeError(f"config field '{key}' must be a mapping")
    return value


def _only(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise EvomergeError(f"unknown field '{unknown[0]}' in {where} (allowed: {', '.join(sorted(allowed))})")


def _path(value: Any, root: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise EvomergeError(f"config field '{where}' must be a path")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (root / p).resolve()


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise EvomergeError(f"config field '{where}' must be a non-empty string")
    return value


def _int(value: Any, where: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise EvomergeError(f"config field '{where}' must be an integer >= {low}, got {value!r}")
    return value


def _float(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise EvomergeError(f"config field '{where}' must be a number, got {value!r}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise EvomergeError(f"config field '{where}' must be true or false, got {value!r}")
    return value


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise EvomergeError(f"config field '{where}' must be one of {', '.join(choices)}, got {value!r}")
    return str(value)
