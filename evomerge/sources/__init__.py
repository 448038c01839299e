"""Model I/O: load and check source models, map tensors to layer groups, write model folders."""

from evomerge.sources.layers import group_of, layer_groups, layer_index, num_layers, param_kind
from evomerge.sources.pool import ModelSource, SourcePool
from evomerge.sources.writer import parse_size, write_model_folder

__all__ = [
    "ModelSource",
    "SourcePool",
    "group_of",
    "layer_groups",
    "layer_index",
    "num_layers",
    "param_kind",
    "parse_size",
    "write_model_folder",
]
