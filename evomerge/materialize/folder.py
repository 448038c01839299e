"""A merge written as a Hugging Face model folder, shard by shard through the fused kernels.

``evomerge merge`` and ``evomerge export`` build the merged model here: the tensors of one shard are
allocated, merged by ``FastMerger`` (the same kernels a worker runs, so the same tensors as the
eager reference operators) and written, then dropped before the next shard; memory holds the
sources, one shard and one tensor's scratch. Nothing is cached across tensors that a single pass
would not use: TIES cuts come from histograms, DARE draws are regenerated, TSV-M's SVDs are not kept.
A layer stack (``write_stacked``) is a copy: each output tensor is one input tensor times its slice's scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor

from evomerge.config.sizes import DEFAULT_SHARD_SIZE
from evomerge.errors import EvomergeError
from evomerge.materialize.fused import CachePolicy, FastMerger
from evomerge.materialize.plan import DTYPES, MergePlan
from evomerge.merge.registry import get_method
from evomerge.recipes.stack import METHOD, LayerStack
from evomerge.sources.layers import layer_index, renumbered
from evomerge.sources.pool import ModelSource, SourcePool
from evomerge.sources.writer import write_model_shards

ONE_PASS = CachePolicy(sources="shared", thresholds="histogram", draws="regenerated", svds="recomputed")


def write_merged(plan: MergePlan, pool: SourcePool, out: Path, *, template: Path, tokenizer: Path | None = None,
                 shard_size: int | str = DEFAULT_SHARD_SIZE, force: bool = False,
                 extra_files: Mapping[str, str | bytes] = {}, check: Callable[[Path], None] | None = None) -> Path:
    """Merge ``plan`` and write it to ``out`` (config from ``template``, tokenizer files from ``tokenizer``);
    ``check`` runs on the finished folder before it is renamed into place."""
    merger = FastMerger(pool, policy=ONE_PASS)
    dtypes = {s.name: (plan.dtype if s.method is not None else None) or pool.base.tensors[s.name].dtype
              for s in plan.steps}
    shapes = {s.name: pool.base.tensors[s.name].shape for s in plan.steps}
    sizes = [(n, shapes[n].numel(), shapes[n].numel() * dtypes[n].itemsize) for n in dtypes]

    def make_shard(names: list[str]) -> dict[str, Tensor]:
        tensors = {n: torch.empty(shapes[n], dtype=dtypes[n]) for n in names}
        bad = merger.materialize(plan, tensors)
        if bad:
            raise EvomergeError(f"merged tensor {bad[0]} has NaN/Inf values: the recipe's weights blow up this model; "
                                "nothing was written")
        return tensors

    return write_model_shards(sizes, make_shard, out, template=template, tokenizer=tokenizer, shard_size=shard_size,
                              force=force, extra_files=extra_files, dtype=plan.dtype_name(pool), check=check)


def write_stacked(stack: LayerStack, out: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                  shard_size: int | str = DEFAULT_SHARD_SIZE, force: bool = False,
                  extra_files: Mapping[str, str | bytes] = {}) -> Path:
    """Write ``stack`` to ``out``: its models are read (and checked) first, then each shard's tensors are taken from
    them by the registry's passthrough and written."""
    stack.validate()
    models = {p: ModelSource.load(p, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
              for p in stack.models}
    _check_same_layers(stack, models)
    plan = {name: (s, source_name) for name, s, source_name in stack.plan({p: list(m.tensors) for p, m in
                                                                          models.items()})}
    passthrough = get_method(METHOD)
    sources = {name: models[s.model].tensors[source_name] for name, (s, source_name) in plan.items()}

    def dtype(name: str) -> torch.dtype:
        return DTYPES[stack.dtype] if stack.dtype else sources[name].dtype

    def tensor(name: str) -> Tensor:
        return passthrough(None, [sources[name]], scale=[plan[name][0].scale]).to(dtype(name))

    sizes = [(n, t.numel(), t.numel() * dtype(n).itemsize) for n, t in sources.items()]
    return write_model_shards(sizes, lambda names: {n: tensor(n) for n in names}, out, template=stack.template,
                              tokenizer=stack.tokenizer_folder, shard_size=shard_size, force=force,
                              extra_files=extra_files, dtype=stack.dtype,
                              config=stack.config_updates({p: m.config for p, m in models.items()}))


def _check_same_layers(stack: LayerStack, models: Mapping[Path, ModelSource]) -> None:
    """Every stacked layer has the template's first layer's tensors and shapes, and every model its model type."""
    template = models[stack.template]
    want = _layer_shapes(template, 0)
    for k, s in enumerate(stack.slices):
        model = models[s.model]
        if model.config.get("model_type") != template.config.get("model_type"):
            raise EvomergeError(f"slices[{k}]: {s.model} is a '{model.config.get('model_type')}' model, "
                                f"{stack.template} a '{template.config.get('model_type')}': stack models of one "
                                "architecture")
        for i in range(*s.layers):
            if _layer_shapes(model, i) != want:
                raise EvomergeError(f"slices[{k}]: layer {i} of {s.model} has other tensors or shapes than layer 0 of "
                                    f"{stack.template}: stack models of one size")


def _layer_shapes(model: ModelSource, index: int) -> dict[str, tuple[int, ...]]:
    return {renumbered(n, 0): tuple(t.shape) for n, t in model.tensors.items() if layer_index(n) == index}
