"""The sources where the merge runs: in place on the CPU, resident on a GPU, or streamed to it group by group.

A worker merges on its own device. On the CPU the kernels read the pool's blocks where they are
(the node's one shared copy: no per-worker copy at all). On a GPU the sources are copied once and
stay resident when the memory plan allows; otherwise each candidate streams them one layer group
(block) at a time: the group's K+1 blocks are copied to the device on a side stream, through two pinned host
chunks, into one of two device buffers, while the kernels work on the previous group in the other (double
buffering). Streaming also runs on the CPU — same code, plain buffers — so the tests cover it without a GPU.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal, Sequence

import torch
from torch import Tensor

from evomerge.sources.pool import SourcePool
from evomerge.sources.store import Block, views

Placement = Literal["shared", "resident", "streamed"]
STAGE = 256 * 2**20  # bytes of each of the two pinned host chunks a streaming GPU worker copies through


class DeviceSources:
    """Per layer group, each tensor's [base, source 1 … K] on the merging device."""

    def __init__(self, pool: SourcePool, device: torch.device, placement: Placement):
        if placement == "shared" and device.type != "cpu":
            raise ValueError("the shared host copy is read in place only by CPU workers; a GPU needs resident or "
                             "streamed")
        self.pool, self.device, self.placement = pool, device, placement
        self.blocks: list[list[Block]] = [list(m.blocks) for m in pool.models]  # [model][group]
        self.groups = [b.group for b in self.blocks[0]]
        self._resident: list[dict[str, list[Tensor]]] | None = None
        self._stream: _DoubleBuffer | None = None
        if placement == "resident":
            self._resident = [self._views(g, [buf.to(device) for buf in self._host(g)])
                              for g in range(len(self.groups))]
        elif placement == "streamed":
            self._stream = _DoubleBuffer(max(sum(m[g].size for m in self.blocks) for g in range(len(self.groups))),
                                         device)

    def stream(self, wanted: Sequence[int]) -> Iterator[tuple[int, dict[str, list[Tensor]]]]:
        """(group index, name -> [base, sources…]) for the groups in ``wanted``, in that order."""
        if self.placement == "shared":
            for g in wanted:
                yield g, self._views(g, self._host(g))
        elif self._resident is not None:
            for g in wanted:
                yield g, self._resident[g]
        else:
            assert self._stream is not None
            yield from self._stream.run(wanted, self._host, self._views)

    def _host(self, g: int) -> list[Tensor]:
        return [m.buffers[g] for m in self.pool.models]

    def _views(self, g: int, buffers: Sequence[Tensor]) -> dict[str, list[Tensor]]:
        per_model = [views(m[g], buf) for m, buf in zip(self.blocks, buffers, strict=True)]
        return {name: [v[name] for v in per_model] for name in per_model[0]}


class _DoubleBuffer:
    """Two device buffers filled in turns. On CUDA each block goes through two pinned host chunks of ``STAGE``
    bytes (a ring: the host fills one while the other is copied to the device on a side stream)."""

    def __init__(self, size: int, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.dev = [torch.empty(size, dtype=torch.uint8, device=device) for _ in range(2)]
        self.pinned = [torch.empty(STAGE, dtype=torch.uint8, pin_memory=True) for _ in range(2)] if self.cuda else []
        self.side: Any = torch.cuda.Stream(device) if self.cuda else None
        self.staged: list[Any] = [None, None]  # event: pinned chunk i's copy to the device is done
        self.copied: list[Any] = [None, None]  # event: slot's group is on the device
        self.used: list[Any] = [None, None]  # event: the kernels reading the slot's device buffer are done

    def run(self, wanted: Sequence[int], host: Any, make_views: Any) -> Iterator[tuple[int, dict[str, list[Tensor]]]]:
        if not wanted:
            return
        sizes = self._load(wanted[0], 0, host)
        for i, g in enumerate(wanted):
            slot = i % 2
            nxt = self._load(wanted[i + 1], 1 - slot, host) if i + 1 < len(wanted) else None
            if self.cuda:
                torch.cuda.current_stream(self.device).wait_event(self.copied[slot])
            yield g, make_views(g, self._split(slot, sizes))
            if self.cuda:
                self.used[slot] = torch.cuda.current_stream(self.device).record_event()
            sizes = nxt if nxt is not None else sizes

    def _load(self, g: int, slot: int, host: Any) -> list[int]:
        """Copy (or start copying) group g's blocks, one per model, into the slot; returns their sizes."""
        blocks: list[Tensor] = host(g)
        offset = 0
        if self.cuda and self.used[slot] is not None:
            self.side.wait_event(self.used[slot])  # the kernels are done with what the slot held
        for block in blocks:
            target = self.dev[slot][offset : offset + block.numel()]
            if self.cuda:
                self._stage(target, block)
            else:
                target.copy_(block)
            offset += block.numel()
        if self.cuda:
            self.copied[slot] = self.side.record_event()
        return [b.numel() for b in blocks]

    def _stage(self, target: Tensor, block: Tensor) -> None:
        """Host block -> device through the pinned ring, the device copies queued on the side stream."""
        for i, a in enumerate(range(0, block.numel(), STAGE)):
            ring = i % 2
            n = min(STAGE, block.numel() - a)
            if self.staged[ring] is not None:
                self.staged[ring].synchronize()  # this pinned chunk's previous copy has left it
            self.pinned[ring][:n].copy_(block[a : a + n])
            with torch.cuda.stream(self.side):
                target[a : a + n].copy_(self.pinned[ring][:n], non_blocking=True)
                self.staged[ring] = self.side.record_event()

    def _split(self, slot: int, sizes: Sequence[int]) -> list[Tensor]:
        out, offset = [], 0
        for size in sizes:
            out.append(self.dev[slot][offset : offset + size])
            offset += size
        return out
