"""A merge written as a Hugging Face model folder, shard by shard through the fused kernels.

``evomerge merge`` and ``evomerge export`` build the merged model here: the tensors of one shard are
allocated, merged by ``FastMerger`` (the same kernels a worker runs, so the same tensors as the
eager reference operators) and written, then dropped before the next shard; memory holds the
sources, one shard and one tensor's scratch. Nothing is cached across tensors that a single pass
would not use: TIES cuts come from histograms, DARE draws are regenerated, TSV-M's SVDs are not kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor

from evomerge.config.sizes import DEFAULT_SHARD_SIZE
from evomerge.errors import EvomergeError
from evomerge.materialize.fused import CachePolicy, FastMerger
from evomerge.materialize.plan import MergePlan
from evomerge.sources.pool import SourcePool
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
