"""The fused merge kernels alone, on one tensor, against that tensor's copy floor: where a candidate's time goes.

    .venv/bin/python scripts/bench_kernels.py [--rows 5632 --cols 2048] [--k 3] [--threads 1,2] [--repeats 7]

``bench_realsize.py`` times whole candidates; this script splits one large bfloat16 tensor's work
(base ~ N(0, 0.02), K sources = base + N(0, 0.002), the shapes of a 1.1B Llama's MLP matrix) into
its parts, each the best of ``--repeats`` calls after a warm-up that compiles:

- the compiled ``gta`` kernel of ``materialize/kernels.py`` for task arithmetic, TIES (trim and sign
  election, cut values given) and DARE-TIES (draws regenerated in the kernel, and cached);
- the TIES cuts of a candidate from the worker's histograms (``HistogramCuts.cuts``, histograms filled; the
  mean over 24 candidates' densities, not the best call: where a cut falls decides its cost), the
  same without the tie index (``TIE_KEYS`` = 0), and the one-off histogram fill (counts and tie
  index) of all K sources; and how source 0's |τ| tie (what the tie index covers);
- the floor: K+1 reads and one write of the tensor at this machine's copy bandwidth (same threads).

The table replaces this script's section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Callable

from benchdoc import REPO, cpu_model, publish  # noqa: E402 (first: sets the offline environment)

import torch  # noqa: E402

from bench_materialize import copy_bandwidth  # noqa: E402
from evomerge.materialize import thresholds  # noqa: E402
from evomerge.materialize.fused import below  # noqa: E402
from evomerge.materialize.kernels import (
    GTA_PARAMS,  # noqa: E402
    chunk_kernel,  # noqa: E402
)
from evomerge.materialize.thresholds import HistogramCuts  # noqa: E402
from evomerge.merge.draws import draw_key  # noqa: E402
from evomerge.merge.sparsify import task_vector  # noqa: E402


def best(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def mean_cuts(cuts: HistogramCuts, base: torch.Tensor, sources: list[torch.Tensor], candidates: int = 24) -> float:
    """Seconds per candidate of a candidate's cuts (histograms filled), the mean over densities spread in
    [0.2, 0.9]: where a cut falls (a group of ties, a bin of several values) decides its cost."""
    g = torch.Generator().manual_seed(1)
    sweep = [(0.2 + 0.7 * torch.rand(len(sources), generator=g)).tolist() for _ in range(candidates)]
    for density in sweep:  # warm-up: compiles the kernels these cuts use
        cuts.cuts("w", density, base, sources)
    t0 = time.perf_counter()
    for density in sweep:
        cuts.cuts("w", density, base, sources)
    return (time.perf_counter() - t0) / candidates


def histogram_cuts() -> HistogramCuts:
    """A worker's TIES cuts from histograms, compiled kernels over whole tensors (a fresh, empty cache)."""
    return HistogramCuts(compiles=lambda _: True, chunk=lambda size, _: size)


def tensors(rows: int, cols: int, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(rows * cols, generator=g) * 0.02).to(torch.bfloat16)
    return base, [(base.float() + 0.002 * torch.randn(rows * cols, generator=g)).to(torch.bfloat16) for _ in range(k)]


def measure(base: torch.Tensor, sources: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """Seconds per call of each part, for one tensor (flat) and its K sources."""
    k, n = len(sources), base.numel()
    weight, density = [0.5, 0.3, 0.2, 0.1, 0.4, 0.6][:k], [0.5, 0.6, 0.3, 0.4, 0.7, 0.2][:k]
    cuts = histogram_cuts()
    fill = best(lambda: histogram_cuts().cuts("w", density, base, sources), 1)
    trims = cuts.cuts("w", density, base, sources)
    cut_time = mean_cuts(cuts, base, sources)
    thresholds.TIE_KEYS, keys_before = 0, thresholds.TIE_KEYS
    unindexed = histogram_cuts()
    unindexed.cuts("w", density, base, sources)
    scan_time = mean_cuts(unindexed, base, sources)
    thresholds.TIE_KEYS = keys_before
    out = torch.empty_like(base)
    kernel = chunk_kernel("gta", True)
    keys = torch.tensor([draw_key(0, "w", j) for j in range(0, k, 2)], dtype=torch.int64)
    dare_cut = torch.tensor([int(d * 2**16) for d in density], dtype=torch.int64)
    cached = [row for j in range(k) for row in torch.randint(0, 256, (2, n), dtype=torch.uint8)]

    def gta(lows: list[float], draws: list[torch.Tensor], cut: torch.Tensor, trim: bool, dare: bool,
            consensus: bool) -> None:
        params = GTA_PARAMS.pack(torch.float32, base.device, weight=weight, low=lows,
                                 dare_divisor=[0.5 if dare else 1.0] * k, lam=1.0, divisor=1.0, normalize=1.0)
        kernel(out, base, sources, draws, params, cut, torch.tensor(0), keys, torch.bfloat16, trim, dare, consensus)

    zeros, none = [0.0] * k, torch.zeros(k, dtype=torch.int64)
    lowered = [below(t.low, torch.float32) for t in trims]  # the range before every cut: the ties are kept
    return {
        "task arithmetic kernel": best(lambda: gta(zeros, [], none, False, False, False), repeats),
        "TIES kernel (cut values given)": best(lambda: gta(lowered, [], none, True, False, True), repeats),
        "TIES cuts from histograms (per candidate: mean of 24, densities in [0.2, 0.9])": cut_time,
        "the same without the tie index (every tie found by a counting scan)": scan_time,
        "DARE-TIES kernel, draws regenerated": best(lambda: gta(zeros, [], dare_cut, False, True, True), repeats),
        "DARE-TIES kernel, draws cached": best(lambda: gta(zeros, cached, dare_cut, False, True, True), repeats),
        "histogram fill (counts, tie index) of all sources and the first cuts (once per worker)": fill,
    }


def tie_profile(base: torch.Tensor, source: torch.Tensor) -> str:
    """How source 0's |τ| ties: distinct values, the largest group, and the share of tied entries (groups of two or
    more) whose value the tie index holds."""
    values, counts = torch.unique(task_vector(base, source, torch.float32).abs(), return_counts=True)
    tied = int(counts[counts > 1].sum())
    index = histogram_cuts().counts("w", 0, base, source).ties
    indexed = int(index.ends[:, -1].sum()) if index is not None else 0
    return (f"source 0's |τ|: {values.numel():,} distinct values, the largest group {counts.max() / base.numel():.1%} "
            f"of the entries; the tie index's {thresholds.TIE_KEYS} values hold {indexed / max(tied, 1):.0%} of the "
            "tied entries")


def report(rows: dict[int, dict[str, float]], floors: dict[int, float], args: argparse.Namespace, shape: str,
           ties: str) -> str:
    threads = sorted(rows)
    lines = [
        "## The fused kernels alone, on one tensor (`scripts/bench_kernels.py`)\n",
        f"- date: {dt.date.today().isoformat()}; machine: {cpu_model()}, no GPU; torch {torch.__version__}",
        f"- tensor: {shape}; best of {args.repeats} calls after a compiling warm-up; floor = (K+1) reads and one write "
        "of the tensor at the copy bandwidth with the same threads",
        f"- {ties}\n",
        "| part | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}: time (× floor)" for t in threads) + " |",
        "|---|" + "---|" * len(threads),
        "| floor | " + " | ".join(f"{floors[t] * 1e3:.1f} ms" for t in threads) + " |",
    ]
    for part in rows[threads[0]]:
        lines.append(f"| {part} | " + " | ".join(f"{rows[t][part] * 1e3:.1f} ms ({rows[t][part] / floors[t]:.1f}×)"
                                                   for t in threads) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=5632)
    p.add_argument("--cols", type=int, default=2048)
    p.add_argument("--k", type=int, default=3, help="sources besides the base")
    p.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=REPO / "docs" / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print the section only")
    args = p.parse_args()
    base, sources = tensors(args.rows, args.cols, args.k)
    rows, floors = {}, {}
    for t in (int(x) for x in args.threads.split(",")):
        torch.set_num_threads(t)
        floors[t] = (args.k + 2) * base.numel() * base.element_size() / copy_bandwidth()
        rows[t] = measure(base, sources, args.repeats)
        print(t, {part: round(s * 1e3, 2) for part, s in rows[t].items()}, flush=True)
    shape = f"{args.rows} × {args.cols} bfloat16 ({base.numel() * 2 / 1e6:.1f} MB), K = {args.k}"
    publish(args.out, "bench_kernels", report(rows, floors, args, shape, tie_profile(base, sources[0])),
            write=not args.no_write)


if __name__ == "__main__":
    main()
