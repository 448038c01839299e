"""mergekit's YAML: read as a Recipe, and written for a Recipe, for the methods both tools compute the same way.

Read: ``merge_method`` with ``models:`` or one whole-model ``slices:`` entry; numeric gradients become
per-layer overrides, interpolated over the layers as mergekit does. Refused with a one-line reason:
methods evomerge lacks, LoRA references, layer stacking, parameter filters, tokenizer options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from evomerge.errors import EvomergeError
from evomerge.merge.registry import get_method, method_names
from evomerge.recipes.evomerge_yaml import group_spec
from evomerge.recipes.recipe import GroupSpec, Recipe
from evomerge.sources.layers import num_layers
from evomerge.sources.pool import read_config

IGNORED = {"int8_mask"}  # mergekit parameters that only steer its execution
DTYPES = ("float32", "float16", "bfloat16", "float64")


def mergekit_methods() -> list[str]:
    return [m for m in method_names() if get_method(m).mergekit]


def parse_mergekit(data: Mapping[str, Any], root: Path) -> Recipe:
    """Map a mergekit config onto a Recipe; refuse what has no faithful equivalent."""
    name = str(data["merge_method"])
    if name not in mergekit_methods():
        raise EvomergeError(f"mergekit method '{name}' is not supported by evomerge (supported: {', '.join(mergekit_methods())})")
    method = get_method(name)
    for key in ("modules", "tokenizer", "tokenizer_source", "chat_template"):
        if data.get(key):
            raise EvomergeError(f"mergekit option '{key}' is not supported by evomerge; remove it from the recipe")
    entries = _models(data, root)
    base = _path(data["base_model"], root) if data.get("base_model") else None
    sources = [e for e in entries if not method.needs_base or e[0] != base]
    if not sources:
        raise EvomergeError("the mergekit recipe lists no model besides base_model")
    n_layers = _num_layers(base or sources[0][0])
    settings = [{k: v for k, v in params.items() if k not in IGNORED} for _, params in sources]
    global_settings = {k: v for k, v in (data.get("parameters") or {}).items() if k not in IGNORED}

    def spec_at(t: float) -> GroupSpec:
        per = [{k: _at(v, t, k) for k, v in p.items()} for p in settings]
        return group_spec(name, per, {k: _at(v, t, k) for k, v in global_settings.items()}, "models[].parameters")

    default = spec_at(0.0)
    groups = {}
    for i in range(n_layers):
        spec = spec_at(i / (n_layers - 1) if n_layers > 1 else 1.0)
        if spec != default:
            groups[f"layers.{i}"] = spec
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise EvomergeError(f"unknown dtype '{dtype}' (use one of: {', '.join(DTYPES)})")
    return Recipe(base=base, sources=tuple(p for p, _ in sources), default=default, groups=groups, dtype=dtype)


def _models(data: Mapping[str, Any], root: Path) -> list[tuple[Path, dict[str, Any]]]:
    if data.get("models"):
        return [(_path(m.get("model"), root), dict(m.get("parameters") or {})) for m in _mappings(data["models"], "models")]
    slices = data.get("slices")
    if not slices:
        raise EvomergeError("the mergekit recipe has neither 'models' nor 'slices'")
    if len(slices) != 1:
        raise EvomergeError("mergekit recipes with several slices (layer stacking) are not supported; merge whole models")
    out = []
    for src in _mappings(slices[0].get("sources"), "slices[0].sources"):
        path = _path(src.get("model"), root)
        n = _num_layers(path)
        if list(src.get("layer_range", [0, n])) != [0, n]:
            raise EvomergeError(f"mergekit layer_range {src.get('layer_range')} of {path} is not the whole model [0, {n}]: "
                                "only whole-model merges are supported")
        out.append((path, dict(src.get("parameters") or {})))
    return out


def _mappings(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise EvomergeError(f"'{where}' must be a non-empty list of mappings (e.g. '- model: ./path')")
    return value


def _path(value: Any, root: Path) -> Path:
    if isinstance(value, dict):
        value = value.get("model", value.get("path"))
    if not isinstance(value, str) or not value:
        raise EvomergeError("'model' must be a model folder path")
    if "+" in value:
        raise EvomergeError(f"mergekit LoRA references ('{value}') are not supported: merge the LoRA into the model first")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


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
    raise EvomergeError(f"mergekit parameter '{key}': only numbers and numeric gradients are supported (filters are not), got {setting!r}")


def _num_layers(model: Path) -> int:
    n = num_layers(read_config(model), [])
    if n < 1:
        raise EvomergeError(f"cannot tell the number of layers of {model} from its config.json")
    return n


def to_mergekit(recipe: Recipe, out_dtype: str) -> tuple[str | None, str]:
    """(mergekit YAML, a note for the card) — or (None, why there is none)."""
    distinct = _distinct(recipe.specs)
    if len(distinct) > 1:
        return None, (
            f"no mergekit.yaml: the genome sets different values in different layer groups ({len(distinct)} distinct "
            "settings); mergekit could only express that with one slice per layer, whose handling of embeddings, final "
            "norm and lm_head has not been verified to match evomerge's groups. Rebuild with evomerge_recipe.yaml."
        )
    spec = recipe.default
    method = spec.merge_method
    if not method.mergekit:
        return None, f"no mergekit.yaml: mergekit has no method matching evomerge's '{method.name}'."
    params = {**{k: v for k, v in method.globals.items() if isinstance(v, (bool, int, float))}, **spec.params}
    unknown = sorted(k for k in [*params, *spec.source_params] if not method.param(k).mergekit)
    if unknown:
        return None, f"no mergekit.yaml: parameter '{unknown[0]}' of '{method.name}' has no mergekit equivalent."
    models = [{"model": str(p), "parameters": {method.param(k).recipe_name: float(v[i]) for k, v in spec.source_params.items()}}
              for i, p in enumerate(recipe.sources)]
    data: dict[str, Any] = {"merge_method": method.name}
    if method.needs_base and recipe.base is not None:
        data["base_model"] = str(recipe.base)
    data["models"] = models
    data["parameters"] = {method.param(k).recipe_name: v for k, v in params.items()}
    data["dtype"] = "float32"
    data["out_dtype"] = out_dtype
    note = "mergekit.yaml reproduces this merge with `mergekit-yaml mergekit.yaml OUT` (one method, the same values in every layer group)."
    if method.random:
        note += (" mergekit draws its own random DARE masks, so its result is another sample of the same recipe, not"
                 " bit-identical to this model; evomerge_recipe.yaml rebuilds it exactly.")
    header = "# mergekit config equivalent to evomerge_recipe.yaml (written by evomerge export)\n"
    return header + yaml.safe_dump(data, sort_keys=False), note


def _distinct(specs: list[GroupSpec]) -> list[GroupSpec]:
    out: list[GroupSpec] = []
    for spec in specs:
        if spec not in out:
            out.append(spec)
    return out
