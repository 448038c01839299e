"""Real sizes on a GPU: a 7B-shaped bfloat16 family merged on the device, against the device's copy floor.

    .venv/bin/python scripts/bench_device.py [--device cuda] [--layers 32] [--repeats 5]
        [--placements resident,streamed] [--no-write]

Made to fit a few minutes of a lent GPU (one H200: the family, 4 × 13.5 GB, is made in about a minute):
random weights of Llama-2-7B's shape (hidden 4096, 32 layers, intermediate 11008, 32 heads, vocab
32000: 6.7B parameters), base + K = 3 sources (base + small noise), generated on the device and packed
into a ``SourcePool`` on the host one model at a time (the host holds the packed sources and one model).

For each placement of the sources — ``resident`` in device memory (the memory plan's choice when they
fit) and ``streamed`` layer group by layer group from pinned host memory — and for task arithmetic,
TIES and DARE-TIES, ``FastMerger.materialize`` on the device is timed per candidate: the best of
``--repeats`` calls, each with new weights and densities, after one first call that compiles the
kernels and fills the caches, the device synchronized around each call. The cache policy is the plan's
on a GPU: TIES cuts from histograms, DARE draws regenerated in the kernel. Floors:

- **device**: (K+1) reads and one write of the model at the device's copy bandwidth (the best of large
  device-to-device copies, read + write counted). Targets (issue 10), sources resident: task
  arithmetic ≤ 2×, TIES ≤ 3×;
- **link** (streamed only): the K+1 models copied from pinned host memory at the measured
  host-to-device bandwidth, which bounds a streamed candidate from below.

``--device cpu`` with small shapes runs the same code on any machine (a check of the script, not a
figure): ``--device cpu --hidden 256 --ff 512 --layers 2 --heads 4 --kv-heads 4 --vocab 512
--placements shared --no-write``. The table replaces this script's section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Callable

from benchdoc import REPO, publish  # noqa: E402 (first: sets the offline environment)

import torch  # noqa: E402

from bench_realsize import METHODS, TARGET, add_family_args, candidate, fmt_s, llama_config, meta_shapes, verdict  # noqa: E402
from evomerge.config.sizes import format_size  # noqa: E402
from evomerge.materialize.fused import CachePolicy, FastMerger  # noqa: E402
from evomerge.materialize.plan import MergePlan  # noqa: E402
from evomerge.sources.pool import SourcePool  # noqa: E402

GPU_TARGETS = ("task_arithmetic", "ties")  # the targets on a GPU, with sources resident


class Family(Sequence):
    """Model i's tensors (0: the base), made on ``device`` from fixed seeds each time it is asked for, so
    ``SourcePool.of`` packs one model at a time and the host never holds them all unpacked."""

    def __init__(self, shapes: dict[str, torch.Size], k: int, device: torch.device):
        self.shapes, self.k, self.device = shapes, k, device

    def __len__(self) -> int:
        return self.k + 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if not 0 <= i <= self.k:
            raise IndexError(i)
        base_gen = torch.Generator(self.device).manual_seed(0)
        noise_gen = torch.Generator(self.device).manual_seed(100 + i)
        out = {}
        for name, shape in self.shapes.items():
            if name.endswith("norm.weight"):
                t = torch.ones(shape, device=self.device)
            else:
                t = torch.randn(shape, generator=base_gen, device=self.device) * 0.02
            if i > 0:
                t = t.to(torch.bfloat16).float() + 0.002 * torch.randn(shape, generator=noise_gen, device=self.device)
            out[name] = t.to(torch.bfloat16).cpu()
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def copy_bandwidth(device: torch.device, n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second of a large copy within the device (read + write counted), best of ``repeats``."""
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * n_bytes / min(timed(lambda: dst.copy_(src), device) for _ in range(repeats))


def link_bandwidth(device: torch.device, n_bytes: int = 1 << 30, repeats: int = 3) -> float:
    """Bytes per second from pinned host memory to the device, best of ``repeats``."""
    src = torch.ones(n_bytes // 4, pin_memory=True)
    dst = torch.empty(src.shape, device=device)
    return n_bytes / min(timed(lambda: dst.copy_(src, non_blocking=True), device) for _ in range(repeats))


def measure(pool: SourcePool, placement: str, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """Per method: first call, best per-candidate call, and the floors, with the sources placed as asked."""
    merger = FastMerger(pool, policy=CachePolicy(placement, "histogram", "regenerated"), device=device)
    live = {n: torch.empty(t.shape, dtype=t.dtype, device=device) for n, t in pool.base.tensors.items()}
    model = sum(t.numel() * t.element_size() for t in pool.base.tensors.values())
    k = len(pool.sources)
    paths = [Path("/memory/base"), [Path(f"/memory/source{i}") for i in range(k)]]
    device_floor = (k + 2) * model / copy_bandwidth(device)
    link_floor = (k + 1) * model / link_bandwidth(device) if placement == "streamed" and device.type == "cuda" else None
    rows = []
    for method in METHODS:
        plans = [MergePlan.build(candidate(method, *paths, v), pool) for v in range(args.repeats + 1)]
        first = timed(partial(merger.materialize, plans[0], live), device)
        fast = min(timed(partial(merger.materialize, plan, live), device) for plan in plans[1:])
        row = dict(placement=placement, method=method, first=first, fast=fast, device_floor=device_floor,
                   link_floor=link_floor, cache=merger.cache_bytes())
        print(json.dumps(row), flush=True)
        rows.append(row)
    del merger, live
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def report(what: str, device: torch.device, rows: list[dict], wall: float) -> str:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else "CPU (a check of the script, not a GPU figure)")
    lines = [
        "## Real sizes on a GPU: a 7B-shaped family merged on the device (`scripts/bench_device.py`)\n",
        f"- date: {dt.date.today().isoformat()}; device: {name}; torch {torch.__version__}; whole script {wall:.0f} s",
        f"- family: {what}",
        "- per candidate: `FastMerger.materialize` on the device, best of the timed calls (new weights and densities "
        "each) after a first call that compiles the kernels and fills the caches; TIES cuts from histograms, DARE "
        "draws regenerated in the kernel (the memory plan's policy on a GPU)",
        "- device floor: (K+1) reads and one write of the model at the device's copy bandwidth; link floor "
        "(streamed): the K+1 models at the pinned host-to-device bandwidth\n",
        "| sources | method | cache | first call | per candidate | device floor | per candidate / device floor | "
        "target | link floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["fast"] / r["device_floor"]
        wanted = r["placement"] == "resident" and r["method"] in GPU_TARGETS
        target = f"≤ {TARGET[r['method']]:g}× {verdict(ratio, TARGET[r['method']])}" if wanted else "–"
        link = fmt_s(r["link_floor"]) if r["link_floor"] is not None else "–"
        lines.append(f"| {r['placement']} | {r['method']} | {format_size(r['cache'])} | {fmt_s(r['first'])} | "
                     f"{fmt_s(r['fast'])} | {fmt_s(r['device_floor'])} | {ratio:.1f}× | {target} | {link} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    add_family_args(p, hidden=4096, layers=32, ff=11008, heads=32, kv_heads=32, vocab=32000)  # Llama-2-7B's shape
    p.add_argument("--repeats", type=int, default=5, help="timed calls per method and placement")
    p.add_argument("--placements", default="resident,streamed", help="comma list of resident, streamed (shared: CPU)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print the section only")
    args = p.parse_args()
    t0 = time.perf_counter()
    device = torch.device(args.device)
    config = llama_config(args)
    shapes = meta_shapes(config)
    params = sum(s.numel() for s in shapes.values())
    pool = SourcePool.of(Family(shapes, args.k, device), config)
    what = (f"random Llama, bfloat16: hidden {args.hidden}, {args.layers} layers, intermediate {args.ff}, {args.heads} "
            f"heads / {args.kv_heads} KV heads, vocab {args.vocab} ({params / 1e9:.2f}B parameters, "
            f"{format_size(2 * params)} per model); base + K = {args.k}; made in {time.perf_counter() - t0:.0f} s")
    print(what, flush=True)
    rows = [r for placement in args.placements.split(",") for r in measure(pool, placement, device, args)]
    publish(args.out, "bench_device", report(what, device, rows, time.perf_counter() - t0), write=not args.no_write)


if __name__ == "__main__":
    main()
