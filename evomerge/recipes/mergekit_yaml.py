"""mergekit's YAML: read as a Recipe, and written for a Recipe, for the methods both tools compute the same way.

Read: ``merge_method`` with ``models:`` or one whole-model ``slices:`` entry; numeric gradients become
per-layer overrides, interpolated over the layers as mergekit does; ``passthrough`` with slices of one model
each is a layer stack. Refused with a one-line reason: methods evomerge lacks, LoRA references, slices of
partial layer ranges for other methods, parameter filters, tokenizer options.

Written (``to_mergekit``): any recipe with one method mergekit shares — ``models:`` when every group
has the same values, else one slice per layer group with parameter filters per kind; the methods and
their parameters' mergekit spellings come from the registry. What mergekit cannot reproduce (random
drops) gets its closest setting and the card's one line says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from evomerge.config.search import DTYPE_NAMES
from evomerge.errors import EvomergeError
from evomerge.merge.registry import MergeMethod, get_method, method_names
from evomerge.recipes.evomerge_yaml import group_spec
from evomerge.recipes.recipe import GroupSpec, Recipe
from evomerge.recipes.stack import METHOD, LayerSlice, LayerStack
from evomerge.sources.folder import read_config
from evomerge.sources.layers import group_of, layer_groups, layer_index, num_layers, param_kind

IGNORED = {"int8_mask"}  # mergekit parameters that only steer its execution


def mergekit_methods() -> list[str]:
    return [m for m in method_names() if get_method(m).mergekit]


def parse_mergekit(data: Mapping[str, Any], root: Path) -> Recipe | LayerStack:
    """Map a mergekit config onto a Recipe (a LayerStack for passthrough slices); refuse what has no faithful
    equivalent."""
    name = str(data["merge_method"])
    if name not in mergekit_methods():
        raise EvomergeError(f"mergekit method '{name}' is not supported by evomerge (supported: "
                            f"{', '.join(mergekit_methods())})")
    method = get_method(name)
    for key in ("modules", "tokenizer", "tokenizer_source", "chat_template"):
        if data.get(key):
            raise EvomergeError(f"mergekit option '{key}' is not supported by evomerge; remove it from the recipe")
    if name == METHOD and data.get("slices"):
        return _stack(data, root)
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
    dtype = _dtype(data)
    return Recipe(base=base, sources=tuple(p for p, _ in sources), default=default, groups=groups, dtype=dtype)


def _models(data: Mapping[str, Any], root: Path) -> list[tuple[Path, dict[str, Any]]]:
    if data.get("models"):
        return [(_path(m.get("model"), root), dict(m.get("parameters") or {}))
                for m in _mappings(data["models"], "models")]
    slices = data.get("slices")
    if not slices:
        raise EvomergeError("the mergekit recipe has neither 'models' nor 'slices'")
    if len(slices) != 1:
        raise EvomergeError("mergekit recipes with several slices (per-layer settings, as evomerge export writes them) "
                            "are read for passthrough only (layer stacking): merge the evomerge_recipe.yaml beside it, "
                            "or run mergekit-yaml")
    out = []
    for src in _mappings(slices[0].get("sources"), "slices[0].sources"):
        path = _path(src.get("model"), root)
        n = _num_layers(path)
        if list(src.get("layer_range", [0, n])) != [0, n]:
            raise EvomergeError(f"mergekit layer_range {src.get('layer_range')} of {path} is not the whole model [0, "
                                f"{n}]: only whole-model merges are supported")
        out.append((path, dict(src.get("parameters") or {})))
    return out


def _stack(data: Mapping[str, Any], root: Path) -> LayerStack:
    """mergekit's passthrough slices, one model each, as a LayerStack (a scale from the source, else the top level)."""
    default_scale = _scale((data.get("parameters") or {}), "parameters")
    slices = []
    for k, entry in enumerate(_mappings(data["slices"], "slices")):
        sources = _mappings(entry.get("sources"), f"slices[{k}].sources")
        if len(sources) != 1:
            raise EvomergeError(f"slices[{k}] has {len(sources)} sources: passthrough takes exactly one model per "
                                "slice")
        src = sources[0]
        path = _path(src.get("model"), root)
        layers = src.get("layer_range", [0, _num_layers(path)])
        if (not isinstance(layers, list) or len(layers) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in layers)):
            raise EvomergeError(f"slices[{k}].sources[0].layer_range must be [start, stop], got {layers!r}")
        scale = _scale(src.get("parameters") or {}, f"slices[{k}].sources[0].parameters")
        scale = scale if scale is not None else default_scale
        slice_ = LayerSlice(path, (layers[0], layers[1]), 1.0 if scale is None else scale)
        if (problem := slice_.check()) is not None:
            raise EvomergeError(f"slices[{k}].sources[0].layer_range {problem[1]}")
        slices.append(slice_)
    dtype = _dtype(data)
    return LayerStack(tuple(slices), dtype)


def _dtype(data: Mapping[str, Any]) -> Any:
    """The output dtype a mergekit recipe names (``out_dtype``, else ``dtype``), one evomerge knows."""
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise EvomergeError(f"unknown dtype '{dtype}' (use one of: {', '.join(DTYPE_NAMES)})")
    return dtype


def _scale(parameters: Any, where: str) -> float | None:
    """passthrough's one parameter, a number (mergekit's per-layer gradients of it are not read)."""
    if not isinstance(parameters, dict) or set(parameters) - {"scale"}:
        raise EvomergeError(f"'{where}' may only give passthrough's 'scale'")
    scale = parameters.get("scale")
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool)):
        raise EvomergeError(f"'{where}.scale' must be a number, got {scale!r}")
    return None if scale is None else float(scale)


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
        raise EvomergeError(f"mergekit LoRA references ('{value}') are not supported: merge the LoRA into the model "
                            "first")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _at(setting: Any, t: float, key: str) -> Any:
    """Evaluate a mergekit parameter setting at layer position t (scalars and numeric gradients)."""
    if isinstance(setting, (int, float, bool, str)):
        return setting
    if (isinstance(setting, list) and setting
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting)):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    raise EvomergeError(f"mergekit parameter '{key}': only numbers and numeric gradients are supported (filters are "
                        f"not), got {setting!r}")


def _num_layers(model: Path) -> int:
    n = num_layers(read_config(model), [])
    if n < 1:
        raise EvomergeError(f"cannot tell the number of layers of {model} from its config.json")
    return n


# Writing. A mergekit parameter setting is one value, or conditions ``{filter, value}`` tried in order:
# the first whose filter is a substring of the tensor's name wins; one without a filter matches any.
Filter = str | None

HEADER = (
    "# mergekit config of this merge, written by evomerge export: mergekit-yaml mergekit.yaml MODEL_DIR\n"
    "# Models are named as in the model card; write a local folder's path in place of a name to use that copy.\n"
)


def to_mergekit(recipe: Recipe, tensor_names: Sequence[str], out_dtype: str,
                labels: Mapping[Path, str] | None = None) -> tuple[str | None, str]:
    """(mergekit YAML, one line for the card) — or (None, one line saying why there is none).

    The same values everywhere: mergekit's ``models:`` form. Values per layer group: one slice per
    group, the base and every source over the group's ``layer_range``. Values per parameter kind:
    filters on the kind's module (``.self_attn.``, ``.mlp.``), the layer's other tensors taking the
    unfiltered last value. mergekit merges the embeddings with the first slice's parameters and the
    final norm and lm_head with the last slice's, so those groups get filters of their full tensor
    names there. Every setting is checked to give every tensor evomerge's value. Models are named by
    ``labels`` (folder -> name), else by their paths.
    """
    methods = sorted({s.method for s in recipe.specs})
    if len(methods) > 1:
        missing = [m for m in methods if not get_method(m).mergekit]
        none = f" (mergekit has no method matching {', '.join(missing)})" if missing else ""
        return None, (f"no mergekit.yaml: mergekit applies one merge method to the whole model, and this genome uses "
                      f"{', '.join(methods)} in different layer groups{none}; evomerge_recipe.yaml rebuilds it.")
    method = get_method(methods[0])
    if not method.mergekit:
        return None, f"no mergekit.yaml: mergekit has no method matching evomerge's '{method.name}'."
    unknown = sorted({k for s in recipe.specs for k in [*s.params, *s.source_params] if not method.param(k).mergekit})
    if unknown:
        return None, f"no mergekit.yaml: parameter '{unknown[0]}' of '{method.name}' has no mergekit equivalent."

    def label(path: Path) -> str:
        return (labels or {}).get(path, str(path))

    base = recipe.base if method.needs_base else None
    data: dict[str, Any] = {"merge_method": method.name}
    if base is not None:
        data["base_model"] = label(base)
    sliced = len(_distinct(recipe.specs)) > 1
    if sliced:
        slices = _slices(recipe, method, tensor_names, [label(p) for p in recipe.sources],
                         None if base is None else label(base))
        if slices is None:
            return None, ("no mergekit.yaml: mergekit's parameter filters (substrings of tensor names) cannot single "
                          "out this architecture's attention and MLP tensors; evomerge_recipe.yaml rebuilds it.")
        data["slices"], data["parameters"] = _hoist(slices)
    else:
        per_source, shared = _values(method, recipe.default, len(recipe.sources))
        data["models"] = [_source(label(p), per_source[k]) for k, p in enumerate(recipe.sources)]
        data["parameters"] = shared
    data["dtype"] = "float32"
    data["out_dtype"] = out_dtype
    return HEADER + yaml.dump(data, Dumper=_Dumper, sort_keys=False), _note(method, sliced)


def _note(method: MergeMethod, sliced: bool) -> str:
    """The card's one line about mergekit.yaml: what it reproduces, and what it cannot."""
    form = " (one slice per layer group)" if sliced else ""
    if not method.random:
        return f"mergekit.yaml{form} makes the same merge with mergekit: the same weights, up to float rounding."
    narrowed = (", and it needs d ± ε inside (0, 1), so ε is narrowed per source where d ± ε leaves it"
                if method.family is not None and method.family.sparsify == "ranked_random" else "")
    return (f"mergekit.yaml{form} is mergekit's closest setting, not these weights: mergekit draws its own random "
            f"masks and rescales kept entries to each task vector's L1 norm where evomerge divides by the keep "
            f"probability{narrowed}; evomerge_recipe.yaml rebuilds these weights exactly.")


def _values(method: MergeMethod, spec: GroupSpec, n_sources: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """mergekit's parameters of one spec in its spellings, defaults written out: per source, and shared."""
    per = {**{p: (d,) * n_sources for p, d in method.per_source.items()}, **spec.source_params}
    per_source = [{method.param(p).recipe_name: float(v[k]) for p, v in per.items() if method.param(p).mergekit}
                  for k in range(n_sources)]
    shared = {method.param(p).recipe_name: v for p, v in {**method.globals, **spec.params}.items()
              if method.param(p).mergekit}
    if method.family is not None and method.family.sparsify == "ranked_random":
        epsilon = shared.pop("epsilon")  # mergekit takes it per source, and refuses d ± ε outside (0, 1)
        for values in per_source:
            d = values["density"]
            values["epsilon"] = epsilon if d >= 1 else min(epsilon, 0.999 * min(d, 1 - d))
    return per_source, shared


def _source(model: str, parameters: Mapping[str, Any] | None,
            layer_range: tuple[int, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model}
    if layer_range is not None:
        out["layer_range"] = list(layer_range)
    if parameters:
        out["parameters"] = dict(parameters)
    return out


def _slices(recipe: Recipe, method: MergeMethod, tensor_names: Sequence[str], sources: list[str],
            base: str | None) -> list[dict[str, Any]] | None:
    """One slice per layer group (``base`` first when the method takes one); None where filters cannot
    give every tensor its values."""
    n_layers = _num_layers(recipe.template)
    out = []
    for layer_range, names in _partition(tensor_names, n_layers, recipe.layer_granularity):
        entries = []
        for name in names:
            spec = recipe.spec_for(group_of(name, n_layers, recipe.layer_granularity), param_kind(name))
            entries.append((name, _filter(name), *_values(method, spec, len(recipe.sources))))
        shared = _settings([(name, f, s) for name, f, _, s in entries])
        per_source = [_settings([(name, f, p[k]) for name, f, p, _ in entries]) for k in range(len(sources))]
        if shared is None or None in per_source:
            return None
        inputs = [_source(base, None, layer_range)] if base is not None else []
        inputs += [_source(model, params, layer_range) for model, params in zip(sources, per_source, strict=True)]
        out.append({"sources": inputs, "parameters": shared})
    return out


def _partition(names: Sequence[str], n_layers: int, granularity: int) -> list[tuple[tuple[int, int], list[str]]]:
    """(layer_range, tensor names) per layer group; the first also has the tensors before the layers,
    the last those after."""
    by_group: dict[str, list[str]] = {}
    for name in names:
        by_group.setdefault(group_of(name, n_layers, granularity), []).append(name)
    order = layer_groups(names, n_layers, granularity)
    layers = [g for g in order if g.startswith("layers.")]
    first, last = order.index(layers[0]), order.index(layers[-1])
    parts = []
    for i, group in enumerate(layers):
        indices = [index for index in map(layer_index, by_group[group]) if index is not None]
        before = [n for g in order[:first] for n in by_group[g]] if i == 0 else []
        after = [n for g in order[last + 1:] for n in by_group[g]] if i == len(layers) - 1 else []
        parts.append(((min(indices), max(indices) + 1), before + by_group[group] + after))
    return parts


def _filter(name: str) -> Filter:
    """How a tensor's values are singled out: its full name outside the layers, its module (``.self_attn.``)
    for attention and MLP tensors, none for a layer's other tensors (norms)."""
    index = layer_index(name)
    if index is None:
        return name
    if param_kind(name) == "other":
        return None
    parts = name.split(".")
    return f".{parts[parts.index(str(index)) + 1]}."


def _settings(entries: list[tuple[str, Filter, dict[str, Any]]]) -> dict[str, Any] | None:
    """Settings that give each named tensor its values, or None where first-match filters cannot."""
    if not entries[0][2]:
        return {}
    settings = {p: _setting([(f, values[p]) for _, f, values in entries]) for p in entries[0][2]}
    faithful = all(_resolve(settings[p], name) == v for name, _, values in entries for p, v in values.items())
    return settings if faithful else None


def _setting(values: list[tuple[Filter, Any]]) -> Any:
    """One value where all agree; else a condition per filter whose value differs from the fallback,
    then the fallback."""
    fallback = next((v for f, v in values if f is None), values[-1][1])
    conditions: dict[str, Any] = {}
    for f, v in values:
        if f is not None and v != fallback:
            conditions.setdefault(f, v)
    if not conditions:
        return fallback
    return [*({"filter": f, "value": v} for f, v in conditions.items()), {"value": fallback}]


def _resolve(setting: Any, name: str) -> Any:
    """The value mergekit's ``evaluate_setting`` gives a tensor: the first condition whose filter is in its name."""
    if not isinstance(setting, list):
        return setting
    return next(c["value"] for c in setting if "filter" not in c or c["filter"] in name)


def _hoist(slices: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Shared settings equal in every slice move to the top-level ``parameters``."""
    common = {p: v for p, v in slices[0]["parameters"].items() if all(s["parameters"].get(p) == v for s in slices)}
    out = []
    for s in slices:
        rest = {p: v for p, v in s["parameters"].items() if p not in common}
        out.append({"sources": s["sources"], **({"parameters": rest} if rest else {})})
    return out, common


def _distinct(specs: list[GroupSpec]) -> list[GroupSpec]:
    out: list[GroupSpec] = []
    for spec in specs:
        if spec not in out:
            out.append(spec)
    return out


class _Dumper(yaml.SafeDumper):
    """Lists of numbers in flow style (``layer_range: [0, 4]``), as mergekit writes them."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
