"""Merge recipes: which method, which models, which parameters — per layer group if wanted.

evomerge's own YAML format::

    method: ties
    base: ./base                       # paths relative to the recipe file
    sources:
      - model: ./math
        parameters: {weight: 1.0, density: 0.5}
      - model: ./code
        parameters: {weight: 0.7, density: 0.5}
    parameters: {lambda: 1.0}          # the method's global parameters
    groups:                            # optional per-layer-group overrides;
      layers.0:                        # 'layers.0:attention' / ':mlp' / ':other' narrow to a kind
        method: task_arithmetic        # a group may even use another method
        parameters: {lambda: 0.8}
        sources: [{weight: 1.2}, {weight: 0.3}]
    layer_granularity: 1
    dtype: bfloat16                    # default: each tensor keeps the base's dtype
    seed: 0                            # fixes DARE/DELLA draws

mergekit YAML (``merge_method:`` with ``models:`` or whole-model ``slices:``) is read too, for the
methods both tools share; numeric gradients become per-layer overrides, as mergekit interpolates them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from evomerge.errors import EvomergeError
from evomerge.merge.registry import MergeMethod, canonical_param, get_method

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
# mergekit parameters that only steer its execution and do not change the result.
MERGEKIT_IGNORED = {"int8_mask"}
MERGEKIT_METHODS = {
    "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
    "slerp", "model_stock", "della",
}
RECIPE_KEYS = {"method", "base", "sources", "parameters", "groups", "layer_granularity", "dtype", "seed"}


@dataclass(frozen=True)
class GroupSpec:
    """What to do with the tensors of one layer group."""

    method: str
    source_params: Mapping[str, tuple[float, ...]]  # per-source parameter -> one value per source
    params: Mapping[str, Any]  # global parameters, Python spelling (``lam``)

    @property
    def merge_method(self) -> MergeMethod:
        return get_method(self.method)


@dataclass(frozen=True)
class Recipe:
    base: Path | None
    sources: tuple[Path, ...]
    default: GroupSpec
    groups: Mapping[str, GroupSpec] = field(default_factory=dict)  # fully resolved overrides
    layer_granularity: int = 1
    dtype: str | None = None
    seed: int = 0

    def spec_for(self, group: str, kind: str | None = None) -> GroupSpec:
        """The spec of a tensor: ``group:kind`` overrides ``group``, which overrides the default."""
        if kind is not None and f"{group}:{kind}" in self.groups:
            return self.groups[f"{group}:{kind}"]
        return self.groups.get(group, self.default)

    @property
    def template(self) -> Path:
        """The model whose config and tokenizer the merged folder carries."""
        return self.base if self.base is not None else self.sources[0]

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype] if self.dtype else None

    def validate(self) -> None:
        for name, spec in [("recipe", self.default), *self.groups.items()]:
            method = spec.merge_method
            if method.needs_base and self.base is None:
                raise EvomergeError(f"method '{method.name}' needs a base model: add 'base:' to the recipe")
            try:
                method.validate(len(self.sources), spec.source_params, spec.params)
            except EvomergeError as e:
                raise EvomergeError(f"{e} (in {name if name == 'recipe' else 'group ' + name})") from None

    def to_dict(self) -> dict[str, Any]:
        """The evomerge YAML form, with every group spelled out in full."""
        out: dict[str, Any] = {"method": self.default.method}
        if self.base is not None:
            out["base"] = str(self.base)
        out["sources"] = [
            {"model": str(p), "parameters": {k: v[i] for k, v in self.default.source_params.items()}}
            for i, p in enumerate(self.sources)
        ]
        out["parameters"] = _recipe_params(self.default.params)
        if self.groups:
            out["groups"] = {
                g: {
                    "method": s.method,
                    "parameters": _recipe_params(s.params),
                    "sources": [{k: v[i] for k, v in s.source_params.items()} for i in range(len(self.sources))],
                }
                for g, s in self.groups.items()
            }
        out["layer_granularity"] = self.layer_granularity
        if self.dtype:
            out["dtype"] = self.dtype
        out["seed"] = self.seed
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _recipe_params(params: Mapping[str, Any]) -> dict[str, Any]:
    back = {"lam": "lambda"}
    return {back.get(k, k): v for k, v in params.items()}


def load_recipe(path: str | Path) -> Recipe:
    """Read an evomerge or mergekit YAML recipe and validate it."""
    path = Path(path)
    data = read_yaml_mapping(path, what="recipe")
    recipe = parse_mergekit(data, path.parent) if "merge_method" in data else parse_recipe(data, path.parent)
    recipe.validate()
    return recipe


def read_yaml_mapping(path: Path, *, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise EvomergeError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise EvomergeError(f"{what} {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise EvomergeError(f"{what} {path} must be a YAML mapping of keys to values")
    return data


def parse_recipe(data: Mapping[str, Any], root: Path) -> Recipe:
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise EvomergeError(f"unknown recipe key '{sorted(unknown)[0]}' (allowed: {', '.join(sorted(RECIPE_KEYS))})")
    if "method" not in data:
        raise EvomergeError("recipe has no 'method': name a merge method, e.g. 'method: ties'")
    entries = _list_of_mappings(data.get("sources"), "sources")
    sources = tuple(_model_path(e.get("model"), root, "sources[].model") for e in entries)
    per_source = _per_source_params([e.get("parameters") or {} for e in entries], "sources[].parameters")
    default = _group_spec(str(data["method"]), per_source, data.get("parameters") or {})
    groups = {
        str(name): _override(default, body, len(sources), f"groups.{name}")
        for name, body in (data.get("groups") or {}).items()
    }
    base = _model_path(data["base"], root, "base") if data.get("base") is not None else None
    return Recipe(
        base=base,
        sources=sources,
        default=default,
        groups=groups,
        layer_granularity=_positive_int(data.get("layer_granularity", 1), "layer_granularity"),
        dtype=_dtype(data.get("dtype")),
        seed=_int(data.get("seed", 0), "seed"),
    )


def _override(default: GroupSpec, body: Any, n_sources: int, where: str) -> GroupSpec:
    if not isinstance(body, dict):
        raise EvomergeError(f"{where} must be a mapping with 'method', 'parameters' and/or 'sources'")
    unknown = set(body) - {"method", "parameters", "sources"}
    if unknown:
        raise EvomergeError(f"unknown key '{sorted(unknown)[0]}' in {where} (allowed: method, parameters, sources)")
    method = str(body.get("method", default.method))
    entries = _list_of_mappings(body.get("sources", [{}] * n_sources), f"{where}.sources")
    if len(entries) != n_sources:
        raise EvomergeError(f"{where}.sources has {len(entries)} entries but there are {n_sources} sources: give one per source")
    per_source = {**default.source_params, **_per_source_params(entries, f"{where}.sources")}
    params = {**default.params, **{canonical_param(k): v for k, v in (body.get("parameters") or {}).items()}}
    if method != default.method:  # parameters of another method do not carry over
        m = get_method(method)
        per_source = {k: v for k, v in per_source.items() if k in m.per_source}
        params = {k: v for k, v in params.items() if k in m.globals}
    return GroupSpec(method, per_source, params)


def _group_spec(method_name: str, per_source: dict[str, tuple[float, ...]], params: Mapping[str, Any]) -> GroupSpec:
    method = get_method(method_name)
    if not isinstance(params, dict):
        raise EvomergeError("'parameters' must be a mapping of parameter names to values")
    return GroupSpec(method.name, per_source, {canonical_param(k): v for k, v in params.items()})


def _per_source_params(entries: list[dict[str, Any]], where: str) -> dict[str, tuple[float, ...]]:
    """One tuple per parameter; every source must give the parameter if any does."""
    keys = sorted({k for e in entries for k in e})
    out: dict[str, tuple[float, ...]] = {}
    for key in keys:
        missing = [i for i, e in enumerate(entries) if key not in e]
        if missing:
            raise EvomergeError(f"{where}: source {missing[0]} has no '{key}' while others do: give it for every source")
        out[canonical_param(key)] = tuple(e[key] for e in entries)
    return out


def _list_of_mappings(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise EvomergeError(f"'{where}' must be a non-empty list of mappings (e.g. '- model: ./path')")
    return value


def _model_path(value: Any, root: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise EvomergeError(f"'{where}' must be a model folder path")
    path = Path(value).expanduser()
    return (root / path).resolve() if not path.is_absolute() else path


def _dtype(value: Any) -> str | None:
    if value is None:
        return None
    if value not in DTYPES:
        raise EvomergeError(f"unknown dtype '{value}' (use one of: {', '.join(DTYPES)})")
    return str(value)


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EvomergeError(f"'{where}' must be an integer, got {value!r}")
    return value


def _positive_int(value: Any, where: str) -> int:
    if _int(value, where) < 1:
        raise EvomergeError(f"'{where}' must be >= 1, got {value}")
    return value


# --- mergekit ---------------------------------------------------------------------------------


def parse_mergekit(data: Mapping[str, Any], root: Path) -> Recipe:
    """Map a mergekit config onto a Recipe; refuse what has no faithful equivalent."""
    method = str(data["merge_method"])
    if method not in MERGEKIT_METHODS:
        raise EvomergeError(
            f"mergekit method '{method}' is not supported by evomerge (supported: {', '.join(sorted(MERGEKIT_METHODS))})"
        )
    for key in ("modules", "tokenizer", "chat_template"):
        if data.get(key):
            raise EvomergeError(f"mergekit option '{key}' is not supported by evomerge; remove it from the recipe")
    entries = _mergekit_models(data, root)
    base = _mergekit_path(data["base_model"], root) if data.get("base_model") else None
    sources = [e for e in entries if get_method(method).needs_base is False or e[0] != base]
    if method == "slerp" and base is not None:
        sources = [e for e in entries if e[0] != base]
    if not sources:
        raise EvomergeError("the mergekit recipe lists no model besides base_model")
    n_layers = _num_layers((base or sources[0][0]))
    per_source_settings = [params for _, params in sources]
    global_settings = {k: v for k, v in (data.get("parameters") or {}).items() if k not in MERGEKIT_IGNORED}
    for params in per_source_settings:
        for k in MERGEKIT_IGNORED:
            params.pop(k, None)

    def spec_at(t: float) -> GroupSpec:
        per = _per_source_params([{k: _at(v, t, k) for k, v in p.items()} for p in per_source_settings], "models[].parameters")
        return _group_spec(method, per, {k: _at(v, t, k) for k, v in global_settings.items()})

    default = spec_at(0.0)
    groups = {}
    for i in range(n_layers):
        spec = spec_at(i / (n_layers - 1) if n_layers > 1 else 1.0)
        if spec != default:
            groups[f"layers.{i}"] = spec
    dtype = data.get("out_dtype") or data.get("dtype")
    return Recipe(
        base=base,
        sources=tuple(p for p, _ in sources),
        default=default,
        groups=groups,
        dtype=_dtype(dtype),
    )


def _mergekit_models(data: Mapping[str, Any], root: Path) -> list[tuple[Path, dict[str, Any]]]:
    if data.get("models"):
        return [(_mergekit_path(m["model"], root), dict(m.get("parameters") or {})) for m in _list_of_mappings(data["models"], "models")]
    slices = data.get("slices")
    if not slices:
        raise EvomergeError("the mergekit recipe has neither 'models' nor 'slices'")
    if len(slices) != 1:
        raise EvomergeError("mergekit recipes with several slices (layer stacking) are not supported; merge whole models")
    out = []
    for src in _list_of_mappings(slices[0].get("sources"), "slices[0].sources"):
        path = _mergekit_path(src["model"], root)
        n = _num_layers(path)
        if list(src.get("layer_range", [0, n])) != [0, n]:
            raise EvomergeError(f"mergekit layer_range {src.get('layer_range')} of {path} is not the whole model [0, {n}]: only whole-model merges are supported")
        out.append((path, dict(src.get("parameters") or {})))
    return out


def _mergekit_path(value: Any, root: Path) -> Path:
    if isinstance(value, dict):
        value = value.get("model", value.get("path"))
    if isinstance(value, str) and "+" in value:
        raise EvomergeError(f"mergekit LoRA references ('{value}') are not supported: merge the LoRA into the model first")
    return _model_path(value, root, "model")


def _at(setting: Any, t: float, key: str) -> Any:
    """Evaluate a mergekit parameter setting at layer position t (scalars and numeric gradients)."""
    if isinstance(setting, (int, float, bool, str)):
        return setting
    if isinstance(setting, list) and setting and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    raise EvomergeError(
        f"mergekit parameter '{key}': only numbers and numeric gradients are supported (filters are not), got {setting!r}"
    )


def _num_layers(model: Path) -> int:
    config = model / "config.json"
    if not config.is_file():
        raise EvomergeError(f"model folder {model} has no config.json")
    cfg = json.loads(config.read_text())
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    raise EvomergeError(f"cannot tell the number of layers of {model} from its config.json")

