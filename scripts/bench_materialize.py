"""Per-candidate materialization time: eager operators vs the fused fast path vs the memory floor vs mergekit.

    .venv/bin/python scripts/bench_materialize.py [--sizes zoo,large] [--ks 2,3] [--large-layers 12]
        [--methods linear,task_arithmetic,ties,dare_ties,slerp] [--repeats 3] [--no-mergekit]

For each model size, method and number of sources K (SLERP and nearswap take exactly one source, K = 1; nuslerp
exactly two):

- **floor**: the bytes a merge must move — every source read once (K tensors for a method without a base, such as
  linear, K + 1 with the base otherwise, 2 for SLERP) and the result written once — divided by this
  machine's memory-copy bandwidth (the best of several large ``torch`` copies, counting read + write);
- **eager**: the reference operators (``MergePlan.iter_tensors``) plus ``copy_`` into preallocated
  tensors, as ``Worker.materialize`` did before the fast path;
- **fast**: ``FastMerger.materialize`` (best of ``--repeats``, as the floor's copy is a best-of) after one warm-up call
  (the warm-up compiles the kernels and fills the worker's cache of sorted magnitudes / draws / TSV-M's and PCB's
  source-only work: paid once per worker, shown as "first call"); a method with neither a fused kernel nor kept
  work runs its eager operator there, so its eager column is not measured again;
  each timed call uses different weights and densities (no recompile, no cache refill);
- **mergekit**: ``mergekit-yaml`` end to end on folders of the same models (process start, loading,
  merging, writing the output folder) — what a candidate costs when a search shells out to mergekit.
  evomerge's per-candidate number is the in-memory fast path (its sources are loaded once per worker).

Sizes: **zoo** (``zoo/seed0-llama`` when built, else a random Llama of the zoo's shape; sources are the
base plus noise), **large** (a random Llama of a few hundred million float32 parameters; its
(2K+1)× worker cache must fit in memory) and **smollm2** (a random Llama of SmolLM2-135M's shapes, the real
family's; run alone it writes a section of its own). The tables replace this script's section of
docs/BENCHMARKS.md (between its markers), creating the file if needed; a run of the other methods only
(``--methods`` without the default five) writes a section of its own too.

Targets (issue 5): fast ≤ 2× floor for linear / task arithmetic, ≤ 4× for TIES / DARE;
≥ 10× faster per candidate than mergekit for linear / task arithmetic / TIES. Issue 22: ≤ 3× for the
data-free methods it added.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from benchdoc import REPO, cpu_model, fail, publish  # noqa: E402 (first: sets the offline environment)

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from evomerge.materialize.fused import KEEPS_WORK, CachePolicy, FastMerger, fused  # noqa: E402
from evomerge.materialize.plan import MergePlan  # noqa: E402
from evomerge.merge.registry import get_method  # noqa: E402
from evomerge.recipes.recipe import GroupSpec, Recipe  # noqa: E402
from evomerge.sources.pool import SourcePool  # noqa: E402

MERGEKIT = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")
MERGEKIT_METHODS = ("linear", "task_arithmetic", "ties")
DEFAULT_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp")
ADDED = ("tsvm", "pcb", "sce", "karcher", "nuslerp", "multislerp", "della_linear", "breadcrumbs_ties", "nearswap")
TARGET = {"linear": 2.0, "task_arithmetic": 2.0, "ties": 4.0, "dare_ties": 4.0, "dare_linear": 4.0,
          **{m: 3.0 for m in ADDED}}


# -- models --------------------------------------------------------------------------------------------


def llama_config(hidden: int, ff: int, layers: int, heads: int, vocab: int, tied: bool, kv_heads: int | None = None
                 ) -> dict:
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads or heads, vocab_size=vocab, max_position_embeddings=256,
                      tie_word_embeddings=tied)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg.to_dict()


def random_llama(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random float32 weights with a Llama's tensor names and shapes (built on the meta device, no init)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g) * 0.02 for n, p in model.state_dict().items()
            if not (config.get("tie_word_embeddings") and n == "lm_head.weight")}


def write_folder(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def build_family(root: Path, size: str, k_max: int, args: argparse.Namespace) -> tuple[Path, list[Path], str]:
    """base + k_max 'fine-tunes' (base + seeded noise) as HF folders; returns a description too."""
    zoo = REPO / "zoo" / "seed0-llama"
    if size == "zoo" and (zoo / "config.json").is_file():
        from evomerge.sources.pool import ModelSource

        src = ModelSource.load(zoo)
        config, base = src.config, {n: t.float() for n, t in src.tensors.items()}
        what = f"zoo/seed0-llama ({sum(t.numel() for t in base.values()) / 1e6:.2f}M params)"
    else:
        if size == "zoo":
            from evomerge.zoo.model import DIM, FF, HEADS, LAYERS

            try:
                from evomerge.zoo.tokenizer import VOCAB
            except ImportError:
                from evomerge.zoo.data import VOCAB  # older layout of the zoo package

            config = llama_config(DIM, FF, LAYERS, HEADS, len(VOCAB), tied=True)
        elif size == "smollm2":  # SmolLM2-135M: 30 layers, GQA with 3 key/value heads, tied embeddings
            config = llama_config(576, 1536, 30, 9, 49152, tied=True, kv_heads=3)
        else:
            config = llama_config(args.large_hidden, args.large_ff, args.large_layers, args.large_hidden // 64,
                                  args.large_vocab, tied=False)
        base = random_llama(config, seed=0)
        label = {"zoo": "random Llama, zoo shape", "smollm2": "random Llama, SmolLM2-135M's shape"}.get(size,
                                                                                                  "random Llama")
        what = (f"{label}: hidden {config['hidden_size']}, ff {config['intermediate_size']}, "
                f"{config['num_hidden_layers']} layers, vocab {config['vocab_size']} "
                f"({sum(t.numel() for t in base.values()) / 1e6:.1f}M params, float32)")
    base_dir = write_folder(root / "base", config, base)
    sources = []
    for k in range(k_max):
        g = torch.Generator().manual_seed(100 + k)
        tuned = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in base.items()}
        sources.append(write_folder(root / f"source{k}", config, tuned))
        del tuned
    del base
    gc.collect()
    return base_dir, sources, what


# -- recipes -------------------------------------------------------------------------------------------


def recipe_params(method: str, k: int, variant: int) -> tuple[dict, dict]:
    """Per-source and global parameters of one candidate; ``variant`` nudges them (a new candidate)."""
    e = 0.01 * variant
    weight = [round(w + e, 4) for w in (0.5, 0.3, 0.2, 0.1)[:k]]
    density = [round(d - e, 4) for d in (0.5, 0.6, 0.3, 0.4)[:k]]
    if method in ("linear", "nuslerp", "multislerp"):
        return {"weight": weight}, {}
    if method in ("task_arithmetic", "tsvm"):
        return {"weight": weight}, {"lam": 0.9}
    if method == "pcb":
        return {"weight": weight, "density": density}, {"lam": 0.9}
    if method in ("ties", "dare_ties", "dare_linear", "della_linear", "breadcrumbs_ties"):
        return {"weight": weight, "density": density}, {}
    if method == "slerp":
        return {}, {"t": round(0.35 + e, 4)}
    if method == "nearswap":
        return {}, {"t": round(0.001 + e, 4)}
    if method == "sce":
        return {}, {"select_topk": round(0.5 - e, 4)}
    if method == "karcher":
        return {}, {}  # no weights: every candidate is the same merge
    raise SystemExit(f"no benchmark recipe for method {method}")


def make_plan(method: str, pool: SourcePool, base: Path, sources: list[Path], variant: int) -> MergePlan:
    per, glob = recipe_params(method, len(sources), variant)
    spec = GroupSpec(method, {k: tuple(v) for k, v in per.items()}, glob)
    return MergePlan.build(Recipe(base=base, sources=tuple(sources), default=spec, seed=0), pool)


def mergekit_yaml(method: str, base: Path, sources: list[Path]) -> dict:
    per, glob = recipe_params(method, len(sources), 0)
    models = [{"model": str(s), "parameters": {k: v[i] for k, v in per.items()}} for i, s in enumerate(sources)]
    recipe = {"merge_method": method, "models": models, "dtype": "float32"}
    if method != "linear":
        recipe["base_model"] = str(base)
    if "lam" in glob:
        recipe["parameters"] = {"lambda": glob["lam"]}
    return recipe


# -- measurements --------------------------------------------------------------------------------------


def copy_bandwidth(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write counted), best of ``repeats``."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best


def model_bytes(pool: SourcePool) -> int:
    return sum(t.numel() * t.element_size() for t in pool.base.tensors.values())


def copy_model(pool: SourcePool, dest: dict[str, torch.Tensor]) -> None:
    """The base copied tensor by tensor into the destination: 2 model-sizes of traffic, same layout as a merge."""
    for name, t in pool.base.tensors.items():
        dest[name].copy_(t)


def floor_bytes(method: str, pool: SourcePool) -> int:
    """Bytes a merge must move: each needed input read once, the output written once."""
    total = 0
    for name in pool.tensor_names:
        base = pool.base.tensors[name]
        write = base.numel() * base.element_size()
        srcs = sum(s.tensors[name].numel() * s.tensors[name].element_size() for s in pool.sources)
        if not pool.is_mergeable(name):
            total += 2 * write
        elif not get_method(method).needs_base:
            total += srcs + write
        else:
            total += srcs + write + write  # the base too (SLERP: base + its one source)
    return total


def eager_materialize(plan: MergePlan, pool: SourcePool, dest: dict[str, torch.Tensor]) -> None:
    """Worker.materialize before the fast path: the reference operators, then copy_."""
    with torch.no_grad():
        for name, tensor in plan.iter_tensors(pool):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise RuntimeError(f"{name} is not finite")
            dest[name].copy_(tensor)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, x in a.items():
        if x.is_floating_point():
            d = (x.double() - b[name].double()).norm() / b[name].double().norm().clamp(min=1e-30)
            worst = max(worst, float(d))
    return worst


def run_mergekit(method: str, base: Path, sources: list[Path], work: Path) -> float:
    path = work / f"{method}.yml"
    path.write_text(yaml.safe_dump(mergekit_yaml(method, base, sources)))
    out = work / f"mk-{method}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([MERGEKIT, str(path), str(out), "--no-write-model-card"], check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return wall


def bench_size(size: str, args: argparse.Namespace, root: Path) -> tuple[str, list[dict]]:
    ks = sorted(args.ks)
    base_dir, source_dirs, what = build_family(root / size, size, max(ks), args)
    rows = []
    for k in sorted(set(ks) | ({1} if any(get_method(m).max_sources == 1 for m in args.methods) else set())):
        methods = [m for m in args.methods if takes(m, k)]
        rows += [args.read_back[(size, m, k)] for m in methods if (size, m, k) in args.read_back]
        methods = [m for m in methods if (size, m, k) not in args.read_back]
        if not methods:
            continue
        srcs = source_dirs[:k]
        pool = SourcePool.load(base_dir, srcs)
        dest = {n: torch.empty_like(t) for n, t in pool.base.tensors.items()}
        ref = {n: torch.empty_like(t) for n, t in pool.base.tensors.items()}
        policy = CachePolicy(thresholds="histogram", draws="regenerated") if args.no_cache else CachePolicy()
        merger = FastMerger(pool, policy=policy, compile={"auto": None, "on": True, "off": False}[args.compile])
        for method in methods:
            eager_repeats = args.repeats if size == "zoo" else args.eager_repeats
            skip_eager = ((size != "zoo" and method in ("ties", "dare_ties") and k not in args.large_eager_trim_ks)
                          or not (fused(get_method(method)) or method in KEEPS_WORK))  # fast is the eager operator
            eager = None if skip_eager else min(
                timed(lambda: eager_materialize(make_plan(method, pool, base_dir, srcs, 0), pool, ref))  # noqa: B023, F821 (timed calls it at once)
                for _ in range(eager_repeats))
            first = timed(lambda: merger.materialize(make_plan(method, pool, base_dir, srcs, 0), dest))  # noqa: B023, F821 (timed calls it at once)
            err = None if skip_eager else max_rel_diff(dest, ref)
            # Fast calls and model-sized copies take turns, so both see the same load (a shared machine).
            fast, copy_pass, bandwidth = float("inf"), float("inf"), 0.0
            for r in range(args.repeats):
                fast = min(fast,
                           timed(lambda: merger.materialize(make_plan(method, pool, base_dir, srcs, 1 + r), dest)))  # noqa: B023, F821 (timed calls it at once)
                bandwidth = max(bandwidth, copy_bandwidth(1 << 29, 2))
                copy_pass = min(copy_pass, timed(partial(copy_model, pool, dest)))
            floor = floor_bytes(method, pool) / bandwidth
            mk = None
            if not args.no_mergekit and method in MERGEKIT_METHODS and k in args.mergekit_ks:
                mk = min(run_mergekit(method, base_dir, srcs, root / size) for _ in range(args.mergekit_repeats))
            row = dict(method=method, k=k, bandwidth=bandwidth, model_copy=copy_pass, floor=floor, eager=eager,
                       first=first, fast=fast, err=err, mergekit=mk)
            rows.append(row)
            print(json.dumps({"size": size, **row}), flush=True)
        del pool, dest, ref, merger
        gc.collect()
    shutil.rmtree(root / size, ignore_errors=True)
    return what, sorted(rows, key=lambda r: (r["k"], args.methods.index(r["method"])))


def read_back(path: Path | None) -> dict[tuple[str, str, int], dict]:
    """Rows an earlier run of this script printed (its JSON lines: a run cut short), by (size, method, K)."""
    if path is None:
        return {}
    if not path.is_file():
        fail(f"--read-back {path}: no such file (pass the saved output of an earlier run)")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        return {(r.pop("size"), r["method"], r["k"]): {**r, "read_back": True} for r in rows}
    except (ValueError, KeyError, TypeError) as e:
        fail(f"--read-back {path}: not the printed rows of this script ({type(e).__name__}: {e})")


def takes(method: str, k: int) -> bool:
    """Whether the benchmark runs ``method`` with K = k sources: K = 1 for the one-source methods only."""
    m = get_method(method)
    return (m.max_sources == 1) == (k == 1) and m.min_sources <= k <= (m.max_sources or k)


def fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def table(rows: list[dict]) -> str:
    lines = ["| method | K | copy GB/s | floor | model copy | eager | fast (first call) | fast | fast / floor | target "
             "| eager / fast | mergekit-yaml | mergekit / fast | max rel. diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["fast"] / r["floor"]
        target = TARGET.get(r["method"])
        verdict = "—" if target is None else (f"≤ {target:g}× ✓" if ratio <= target else f"≤ {target:g}× ✗")
        mk = "—" if r["mergekit"] is None else f"{r['mergekit'] / r['fast']:.0f}×"
        speedup = "—" if r["eager"] is None else f"{r['eager'] / r['fast']:.1f}×"
        err = "—" if r["err"] is None else f"{r['err']:.1e}"
        name = r["method"] + (" (read back)" if r.get("read_back") else "")
        lines.append(f"| {name} | {r['k']} | {r['bandwidth'] / 1e9:.1f} | {fmt_s(r['floor'])} | "
                     f"{fmt_s(r['model_copy'])} | {fmt_s(r['eager'])} | {fmt_s(r['first'])} | {fmt_s(r['fast'])} | "
                     f"{ratio:.1f}× | {verdict} | {speedup} | {fmt_s(r['mergekit'])} | {mk} | {err} |")
    return "\n".join(lines)




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="zoo,large",
                   help="comma list of zoo, large, smollm2 (smollm2 alone writes a section of its own)")
    p.add_argument("--ks", default="2,3", help="numbers of sources")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma list; the methods issue 22 added: {','.join(ADDED)}")
    p.add_argument("--large-hidden", type=int, default=1024)
    p.add_argument("--large-ff", type=int, default=2816)
    p.add_argument("--large-layers", type=int, default=12)
    p.add_argument("--large-vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=3, help="timed fast-path calls (best of); eager on the zoo too")
    p.add_argument("--eager-repeats", type=int, default=1, help="eager calls on the large model (best of)")
    p.add_argument("--large-eager-trim-ks", default="",
                   help="K values at which the large model also runs the eager TIES / DARE-TIES reference (minutes "
                   "each)")
    p.add_argument("--mergekit-ks", default="3", help="K values that also run mergekit-yaml")
    p.add_argument("--mergekit-repeats", type=int, default=1)
    p.add_argument("--no-mergekit", action="store_true")
    p.add_argument("--no-cache", action="store_true",
                   help="cache nothing: TIES cuts from histograms, DARE draws regenerated")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="FastMerger(compile=...): auto (the worker's default) compiles tensors of >= 65536 elements "
                   "only")
    p.add_argument("--read-back", type=Path, default=None, metavar="LOG",
                   help="the printed output of an earlier run cut short: its rows are taken, not measured again")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print the tables only")
    args = p.parse_args()
    args.ks = [int(x) for x in args.ks.split(",")]
    args.mergekit_ks = [int(x) for x in args.mergekit_ks.split(",")] if args.mergekit_ks else []
    args.methods = args.methods.split(",")
    args.read_back = read_back(args.read_back)
    args.large_eager_trim_ks = [int(x) for x in args.large_eager_trim_ks.split(",")] if args.large_eager_trim_ks else []
    command = "python scripts/bench_materialize.py " + " ".join(sys.argv[1:])

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, threads {torch.get_num_threads()}, load {load_before}",
          flush=True)
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench_materialize_") as tmp:
        for size in args.sizes.split(","):
            what, rows = bench_size(size, args, Path(tmp))
            sections.append(f"**{size}** — {what}\n\n{table(rows)}")
    bandwidth_end = copy_bandwidth()
    load_after = os.getloadavg()
    own = args.sizes == "smollm2"  # the real family's shape: a section of its own beside the zoo and large tables
    others = not set(args.methods) & set(DEFAULT_METHODS)  # the other methods: a section of their own
    header = (
        f"## Materialization per candidate{' at SmolLM2-135M' if own else ''}"
        f"{': the other methods' if others else ''} (`scripts/bench_materialize.py`)\n\n"
        f"{dt.date.today().isoformat()} · {os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads · load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end "
        f"(shared machine) · memory-copy bandwidth {bandwidth / 1e9:.1f} GB/s at start, {bandwidth_end / 1e9:.1f} at "
        "end (read + write, best of 5 copies of 512 MiB; each row's floor uses such copies taken in turns with its "
        f"fast calls, so both see the same load: the copy GB/s column) · "
        f"whole run {time.perf_counter() - t_start:.0f} s\n\n"
        f"Command: `{command}`\n\n"
        + ("Rows marked *read back* were measured by an earlier run with the same sizes, methods and options, cut "
           "short, and read from its printed rows (`--read-back`); the load, bandwidth and whole-run figures above "
           "are this run's.\n\n"
           if args.read_back else "")
        +
        "Floor = bytes that must move (each needed input read once: K sources for a method without a base, K + 1 "
        "with it, 2 for SLERP; the output written once) / the copy bandwidth. Eager = the reference operators + "
        "`copy_` (the worker before the fast path; \"—\" on the large model: skipped, minutes per call; and for a "
        "method with neither a fused kernel nor kept work, whose fast column is its eager operator). "
        "Fast = `FastMerger.materialize`, best of the timed calls (new weights each) after one warm-up; "
        "\"first call\" = that warm-up (compiles the kernels, fills the sorted-|τ| / draw cache and TSV-M's and "
        "PCB's source-only work; once per worker). mergekit-yaml = end to end on folders (start, load, merge, "
        "write), vs evomerge's in-memory "
        "fast path. Model copy = the base copied tensor by tensor into the destination (2 model-sizes moved), "
        "a practical reference next to the floor. Max rel. diff = worst per-tensor relative L2 difference of fast vs "
        "eager output.\n"
    )
    text = header + "\n" + "\n\n".join(sections) + "\n"
    section = "bench_materialize" + ("-smollm2" if own else "") + ("-others" if others else "")
    publish(args.out, section, text, write=not args.no_write)


if __name__ == "__main__":
    main()
