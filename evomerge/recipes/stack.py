"""Layer stacking: a model whose decoder layers are ranges of other models' layers, one after another.

mergekit calls it a ``passthrough`` merge with several slices (frankenmerges: two copies of a model's middle
layers make a deeper model). evomerge reads mergekit's form and its own::

    method: passthrough
    slices:                               # the output's layers, in order
      - {model: ./a, layers: [0, 16]}     # layers 0..15 of a
      - {model: ./b, layers: [8, 24], scale: 0.5}
    dtype: bfloat16                       # default: each tensor keeps its model's dtype
    tokenizer_source: ./b                 # default: the first slice's model

As mergekit does, the tensors before the layers (embeddings) come from the first slice's model and those after
them (final norm, head) from the last slice's; config.json is the first slice's model's with the new layer count.
Every model must have the first one's layer shapes. Stacks are fixed recipes, not searched: a genome keeps the
base's layer count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from evomerge.config.schema import dump, load
from evomerge.config.search import DType
from evomerge.errors import EvomergeError
from evomerge.sources.folder import read_config
from evomerge.sources.layers import LAYER_COUNT_KEYS, layer_index, num_layers, renumbered, top_level_group

METHOD = "passthrough"  # the registry's method that copies a slice's tensors (times its scale)
BEFORE_LAYERS = ("embed",)  # layer groups taken from the first slice's model; the rest from the last slice's
PER_LAYER_CONFIG = ("layer_types",)  # config lists with one entry per layer, reordered with the layers


@dataclass(frozen=True)
class LayerSlice:
    """Layers ``[start, stop)`` of one model, each tensor times ``scale``."""

    model: Path
    layers: tuple[int, int]
    scale: float = 1.0

    def check(self) -> tuple[str, str] | None:
        start, stop = self.layers
        if not 0 <= start < stop:
            return "layers", f"must be [start, stop) with 0 <= start < stop, got [{start}, {stop}]"
        return None


@dataclass(frozen=True)
class StackFile:
    """evomerge's YAML form of a LayerStack."""

    method: str
    slices: tuple[LayerSlice, ...] = field(metadata={"nonempty": True})
    dtype: DType | None = None
    tokenizer_source: Path | None = None

    def check(self) -> tuple[str, str] | None:
        return None if self.method == METHOD else ("method", f"must be '{METHOD}' in a recipe with slices")


@dataclass(frozen=True)
class LayerStack:
    slices: tuple[LayerSlice, ...]
    dtype: str | None = None  # one of config.search.DTYPE_NAMES; None: each tensor's own
    tokenizer_source: Path | None = None

    @property
    def template(self) -> Path:
        """The model whose config.json the stack carries (with its new layer count)."""
        return self.slices[0].model

    @property
    def tokenizer_folder(self) -> Path:
        return self.tokenizer_source or self.template

    @property
    def models(self) -> list[Path]:
        return list(dict.fromkeys(s.model for s in self.slices))

    @property
    def inputs(self) -> list[tuple[str, Path]]:
        """What stacking reads, labelled (outputs stay outside)."""
        return [("the model folder", p) for p in dict.fromkeys([*self.models, self.tokenizer_folder])]

    @property
    def num_layers(self) -> int:
        return sum(stop - start for s in self.slices for start, stop in [s.layers])

    @property
    def layer_sources(self) -> list[tuple[LayerSlice, int]]:
        """Output layer j -> (its slice, the input layer it copies)."""
        return [(s, i) for s in self.slices for i in range(*s.layers)]

    def validate(self) -> None:
        """Every slice lies inside its model's layers and scales are finite; one line naming the slice if not."""
        for k, s in enumerate(self.slices):
            if not math.isfinite(s.scale):
                raise EvomergeError(f"slices[{k}].scale must be a finite number, got {s.scale}")
            have = _layer_count(s.model)
            if s.layers[1] > have:
                raise EvomergeError(f"slices[{k}] takes layers [{s.layers[0]}, {s.layers[1]}) of {s.model}, which has "
                                    f"{have}: keep the range within [0, {have}]")

    def plan(self, names: Mapping[Path, list[str]]) -> list[tuple[str, LayerSlice, str]]:
        """(output tensor name, its slice, input tensor name) for every tensor of the stack, given each model's
        tensor names: the first slice's model's tensors before the layers, each output layer's copy, the last
        slice's model's tensors after the layers."""
        first, last = self.slices[0], self.slices[-1]
        out: list[tuple[str, LayerSlice, str]] = []
        outside = {s.model: [n for n in names[s.model] if layer_index(n) is None] for s in (first, last)}
        out += [(n, first, n) for n in outside[first.model] if top_level_group(n) in BEFORE_LAYERS]
        for j, (s, i) in enumerate(self.layer_sources):
            out += [(renumbered(n, j), s, n) for n in names[s.model] if layer_index(n) == i]
        out += [(n, last, n) for n in outside[last.model] if top_level_group(n) not in BEFORE_LAYERS]
        return out

    def config_updates(self, configs: Mapping[Path, Mapping[str, Any]]) -> dict[str, Any]:
        """What changes in the template's config.json (``configs``: each model's): its layer count, and per-layer
        lists reordered."""
        config = configs[self.template]
        updates: dict[str, Any] = {key: self.num_layers for key in LAYER_COUNT_KEYS if key in config}
        for key in PER_LAYER_CONFIG:
            per_model = {s.model: configs[s.model].get(key) for s in self.slices}
            lists = {m: v for m, v in per_model.items() if isinstance(v, list)}
            if isinstance(config.get(key), list) and len(lists) == len(per_model):
                updates[key] = [lists[s.model][i] for s, i in self.layer_sources]
        return updates


def _layer_count(model: Path) -> int:
    return num_layers(read_config(model), [])


def parse_stack(data: Mapping[str, Any], root: Path | None = None) -> LayerStack:
    """A LayerStack from evomerge's YAML form (relative paths against ``root``)."""
    file = load(StackFile, data, what="recipe", root=root)
    return LayerStack(file.slices, file.dtype, file.tokenizer_source)


def stack_yaml(stack: LayerStack) -> str:
    """evomerge's YAML form (``parse_stack`` reads it back)."""
    data = dump(StackFile(METHOD, stack.slices, stack.dtype, stack.tokenizer_source))  # type: ignore[arg-type]
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)
