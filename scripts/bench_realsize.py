"""Real sizes: a 1.1B-shaped Llama family searched on Ray workers, exported, and materialized against the copy floor.

    .venv/bin/python scripts/bench_realsize.py [--hidden 2048 --layers 22 --ff 5632 --heads 32 --kv-heads 4
        --vocab 32000] [--k 3] [--workers 2] [--candidates 8] [--repeats 3] [--work DIR] [--no-write]

The family is made here: random bfloat16 weights of the given Llama shape (base, and K sources = base
+ small noise), a character tokenizer and one tiny loglikelihood task (scores are meaningless; the
point is memory and time). Three measurements, each with the whole machine's memory sampled every
50 ms (used = MemTotal − MemAvailable, minus its level just before):

1. **search**: ``evomerge search`` with a TIES / DARE-TIES genome, ``--backend ray --workers N``, the
   default memory plan; the bound is (K+1) × source bytes + N × live model + 4 GB;
2. **export**: the best candidate's recipe written by ``evomerge merge`` (the streamed, fused writer
   that ``evomerge export`` also uses, without export's baseline scoring); the bound is the sources
   + one shard + 2 GB;
3. **materialization per candidate** in one process with 1 torch thread (a search worker's) and
   with 2, for task arithmetic, TIES and DARE-TIES, under the search's default plan and under a
   plan that caches nothing, against the copy floor ((K+1) reads and one write of the model at
   this machine's copy bandwidth with the same threads).

The tables replace this script's section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

from benchdoc import REPO, cpu_model, publish  # noqa: E402 (first: sets the offline environment)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from bench_materialize import copy_bandwidth, timed  # noqa: E402
from evomerge.config.sizes import format_size  # noqa: E402
from evomerge.materialize.fused import CachePolicy, FastMerger  # noqa: E402
from evomerge.materialize.plan import MergePlan  # noqa: E402
from evomerge.recipes import to_yaml  # noqa: E402
from evomerge.recipes.recipe import GroupSpec, Recipe  # noqa: E402
from evomerge.run.log import RunLog  # noqa: E402
from evomerge.sources.pool import SourcePool  # noqa: E402

GB = 10**9
METHODS = ("task_arithmetic", "ties", "dare_ties")
TARGET = {"task_arithmetic": 2.0, "ties": 3.0, "dare_ties": 3.0}
CHARS = "abcdefghijklmnopqrstuvwxyz=>."


class Peak:
    """The whole machine's used memory (MemTotal − MemAvailable), sampled in a thread: peak over the start level."""

    def __enter__(self) -> "Peak":
        self.start = self.peak = used_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, used_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def over(self) -> int:
        return self.peak - self.start


def meminfo() -> dict[str, int]:
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in open("/proc/meminfo")}


def used_bytes() -> int:
    info = meminfo()
    return info["MemTotal"] - info["MemAvailable"]


def machine() -> str:
    return f"load average {os.getloadavg()[0]:.2f}, {format_size(meminfo()['MemAvailable'])} available"


# -- the family -----------------------------------------------------------------------------------------


def add_family_args(p: argparse.ArgumentParser, **shape: int) -> None:
    """--hidden, --layers, --ff, --heads, --kv-heads, --vocab (defaults from ``shape``) and --k:
    what ``llama_config`` reads."""
    for name, default in shape.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    p.add_argument("--k", type=int, default=3, help="sources besides the base")


def llama_config(args: argparse.Namespace) -> dict:
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ff, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                      max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                      eos_token_id=1)
    cfg.architectures = ["LlamaForCausalLM"]
    return {**cfg.to_dict(), "dtype": "bfloat16", "torch_dtype": "bfloat16"}


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                            bos_token="<eos>").save_pretrained(folder)


def write_model(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(folder)


def build_family(work: Path, args: argparse.Namespace) -> tuple[Path, list[Path], str, int]:
    """base + K sources (base + noise), bf16, reused when ``work`` already holds this shape;
    returns the parameters too."""
    config = llama_config(args)
    shapes = meta_shapes(config)
    params = sum(s.numel() for s in shapes.values())
    stamp = json.dumps({"shapes": {n: list(s) for n, s in shapes.items()}, "k": args.k}, sort_keys=True)
    base, sources = work / "base", [work / f"source{k}" for k in range(args.k)]
    marker = work / "family.json"
    if not (marker.is_file() and marker.read_text() == stamp):
        g = torch.Generator().manual_seed(0)
        weights = {n: (torch.ones(s) if n.endswith("norm.weight")
                       else torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
                   for n, s in shapes.items()}
        write_model(base, config, weights)
        for k, folder in enumerate(sources):
            g = torch.Generator().manual_seed(100 + k)
            write_model(folder, config, {n: (t.float() + 0.002 * torch.randn(t.shape, generator=g)).to(torch.bfloat16)
                                         for n, t in weights.items()})
        del weights
        marker.write_text(stamp)
    what = (f"random Llama, bfloat16: hidden {args.hidden}, {args.layers} layers, intermediate {args.ff}, "
            f"{args.heads} heads / {args.kv_heads} KV heads, vocab {args.vocab} ({params / 1e9:.2f}B parameters, "
            f"{format_size(2 * params)} per model); base + K = {args.k}")
    return base, sources, what, params


def meta_shapes(config: dict) -> dict[str, torch.Size]:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return {n: t.shape for n, t in LlamaForCausalLM(LlamaConfig(**config)).state_dict().items()}


def write_task(work: Path, items: int) -> Path:
    """One loglikelihood task (reverse a word) with perplexity as its metric: every weight moves the score."""
    folder = work / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    with open(folder / "rev.jsonl", "w") as f:
        for _ in range(items):
            word = "".join(CHARS[int(j)] for j in torch.randint(0, 26, (5,), generator=g))
            f.write(json.dumps({"q": word, "a": word[::-1]}) + "\n")
    (folder / "real_rev.yaml").write_text(
        "task: real_rev\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'rev.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: \"{{q}}>\"\ndoc_to_target: \"{{a}}.\"\n"
        "metric_list:\n  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}\n"
    )
    return folder


def search_config(work: Path, base: Path, sources: list[Path], tasks: Path, args: argparse.Namespace) -> Path:
    path = work / "search.yaml"
    path.write_text(
        "name: realsize\nseed: 0\n"
        f"sources: {{base: {base}, models: [{', '.join(str(s) for s in sources)}]}}\n"
        f"genome: {{methods: [ties, dare_ties], layer_granularity: {max(1, args.layers // 2)}, "
        "bounds: {weight: [0.0, 1.5], density: [0.2, 0.9]}}\n"
        f"scoring: {{task_path: {tasks}, batch_size: {args.items}}}\n"
        "objectives: [{task: real_rev, metric: perplexity}]\n"
        "strategy: {name: random}\n"
        f"budget: {{max_evals: {args.candidates}}}\n"
        f"execution: {{backend: ray, workers: {args.workers}, in_flight: {args.workers}, threads: {args.threads}}}\n"
    )
    return path


# -- 1. the search --------------------------------------------------------------------------------------


def run_search(config: Path, run_dir: Path, params: int, args: argparse.Namespace) -> dict:
    cli = [sys.executable, "-m", "evomerge.cli"]
    before = machine()
    with Peak() as peak:
        t0 = time.perf_counter()
        subprocess.run([*cli, "search", str(config), "--run-dir", str(run_dir), "--quiet"], check=True)
        wall = time.perf_counter() - t0
    run = RunLog.open(run_dir)
    cands = run.candidates()
    model = 2 * params
    bound = (args.k + 1) * model + args.workers * model + 4 * GB
    return dict(before=before, after=machine(), wall=wall, peak=peak.over, bound=bound, candidates=len(cands),
                failed=sum(not c.ok for c in cands), merge=[c.merge_s for c in cands if c.ok],
                score=[c.score_s for c in cands if c.ok], plan=run.plans()[-1].plan, run=run)


def best_recipe(run: RunLog) -> Recipe:
    from evomerge.genome.space import GenomeSpace

    best = max((c for c in run.candidates() if c.ok), key=lambda c: c.objectives[0])
    return GenomeSpace.for_config(run.config()).to_recipe(best.x)


# -- 2. the export path ---------------------------------------------------------------------------------


def run_merge(recipe: Recipe, work: Path, params: int, args: argparse.Namespace) -> dict:
    path = work / "best.yaml"
    path.write_text(to_yaml(recipe))
    out = work / "merged"
    before = machine()
    with Peak() as peak:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "evomerge.cli", "merge", str(path), "--out", str(out), "--force",
                        "--shard-size", args.shard_size], check=True)
        wall = time.perf_counter() - t0
    shards = sorted(out.glob("*.safetensors"))
    largest = max(f.stat().st_size for f in shards)
    bound = (args.k + 1) * 2 * params + largest + 2 * GB
    return dict(before=before, after=machine(), wall=wall, peak=peak.over, bound=bound, shards=len(shards),
                largest=largest)


# -- 3. materialization per candidate -------------------------------------------------------------------


def candidate(method: str, base: Path, sources: list[Path], variant: int) -> Recipe:
    e = 0.01 * variant
    weight = tuple(round(w + e, 4) for w in (0.5, 0.3, 0.2, 0.1, 0.4, 0.6)[: len(sources)])
    density = tuple(round(d - e, 4) for d in (0.5, 0.6, 0.3, 0.4, 0.7, 0.2)[: len(sources)])
    per = {"weight": weight} if method == "task_arithmetic" else {"weight": weight, "density": density}
    return Recipe(base=base, sources=tuple(sources), default=GroupSpec(method, per, {}), seed=0)


def run_materialize(base: Path, sources: list[Path], policies: dict[str, CachePolicy],
                    args: argparse.Namespace) -> list[dict]:
    print(f"materialize: {machine()}", flush=True)
    pool = SourcePool.load(base, sources)
    live = {n: torch.empty_like(t) for n, t in pool.base.tensors.items()}
    model = sum(t.numel() * t.element_size() for t in pool.base.tensors.values())
    rows = []
    for (label, policy), threads in itertools.product(policies.items(), args.timing_threads):
        torch.set_num_threads(threads)
        merger = FastMerger(pool, policy=policy)
        for method in METHODS:
            plans = [MergePlan.build(candidate(method, base, sources, v), pool) for v in range(args.repeats + 1)]
            first = timed(partial(merger.materialize, plans[0], live))
            best, bandwidth = float("inf"), 0.0
            for plan in plans[1:]:  # merges and copies take turns: both see the same load
                best = min(best, timed(partial(merger.materialize, plan, live)))
                bandwidth = max(bandwidth, copy_bandwidth(1 << 29, 2))
            floor = (len(sources) + 2) * model / bandwidth
            row = dict(policy=label, threads=threads, method=method, first=first, fast=best, floor=floor,
                       bandwidth=bandwidth, cache=merger.cache_bytes(), machine=machine())
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# -- the report -----------------------------------------------------------------------------------------


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def verdict(value: float, bound: float) -> str:
    return "✓" if value <= bound else "✗"


def report(what: str, search: dict | None, merge: dict | None, rows: list[dict], args: argparse.Namespace,
           wall: float) -> str:
    lines = [
        "## Real sizes: a 1.1B-shaped family on Ray workers (`scripts/bench_realsize.py`)\n",
        f"- date: {dt.date.today().isoformat()}; machine: {os.cpu_count()} cores ({cpu_model()}), "
        f"{format_size(meminfo()['MemTotal'])} memory, no GPU; torch {torch.__version__}; whole script {wall:.0f} s",
        f"- command: `python scripts/bench_realsize.py {' '.join(sys.argv[1:])}`",
        f"- family: {what}",
        "- memory: the whole machine's used memory (MemTotal − MemAvailable) sampled every 50 ms, peak minus its level "
        "just before the step (a shared machine: other users' jobs move it too)",
    ]
    if search is not None:
        lines += [
            f"\n**Search** (`evomerge search`, genome TIES / DARE-TIES per layer group, random strategy, "
            f"`--backend ray --workers {args.workers}`, {args.threads} torch thread per worker, default memory plan); "
            f"before: {search['before']}; after: {search['after']}\n",
            "| candidates (failed) | wall | merge per candidate, in the worker: each worker's first (compiles, fills "
            "caches) / the rest, median (slowest: a worker's first of another method fills its caches) | score per "
            "candidate (median) | peak over start | bound: (K+1)·sources + workers·live model + 4 GB | met |",
            "|---|---|---|---|---|---|---|",
            f"| {search['candidates']} ({search['failed']}) | {search['wall']:.0f} s | "
            f"{fmt_s(statistics.median(search['merge'][:args.workers]))} / "
            f"{fmt_s(statistics.median(search['merge'][args.workers:]))} "
            f"({fmt_s(max(search['merge'][args.workers:]))}) | {fmt_s(statistics.median(search['score']))} | "
            f"{format_size(search['peak'])} | {format_size(search['bound'])} | "
            f"{verdict(search['peak'], search['bound'])} |",
            "\nThe run's memory plan (its `plan` record):\n\n```\n" + "\n".join(search["plan"].lines()) + "\n```",
        ]
    if merge is not None:
        lines += [
            "\n**Export** of the best candidate's recipe (`evomerge merge`, the streamed fused writer `evomerge "
            f"export` uses, `--shard-size {args.shard_size}`); before: {merge['before']}; after: {merge['after']}\n",
            "| shards | largest shard | wall | peak over start | bound: sources + one shard + 2 GB | met |",
            "|---|---|---|---|---|---|",
            f"| {merge['shards']} | {format_size(merge['largest'])} | {merge['wall']:.0f} s | "
            f"{format_size(merge['peak'])} | {format_size(merge['bound'])} | "
            f"{verdict(merge['peak'], merge['bound'])} |",
        ]
    if rows:
        lines += [
            f"\n**Materialization per candidate**; machine after the first row: {rows[0]['machine']}, after the last: "
            f"{rows[-1]['machine']} (`FastMerger.materialize` in one process with 1 torch thread, as each search "
            "worker has, and with 2; best of the timed calls, each with new weights and densities, after one first "
            "call that compiles the kernels and fills the caches; floor = (K+1) reads and one write of the model at "
            "the copy bandwidth measured in turns with the calls, same threads)\n",
            "| plan | threads | method | cache per worker | first call | per candidate | floor (copy GB/s) | per "
            "candidate / floor | target |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            ratio = r["fast"] / r["floor"]
            target = TARGET[r["method"]]
            lines.append(f"| {r['policy']} | {r['threads']} | {r['method']} | {format_size(r['cache'])} | "
                         f"{fmt_s(r['first'])} | {fmt_s(r['fast'])} | {fmt_s(r['floor'])} ({r['bandwidth'] / 1e9:.1f}) "
                         f"| {ratio:.1f}× | ≤ {target:g}× {verdict(ratio, target)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_family_args(p, hidden=2048, layers=22, ff=5632, heads=32, kv_heads=4, vocab=32000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per search worker")
    p.add_argument("--timing-threads", default="1,2", help="torch threads of the in-process timings (comma list)")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--items", type=int, default=8, help="items of the calibration task")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per method and plan")
    p.add_argument("--shard-size", default="1GB")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-realsize"),
                   help="folder for the family and the run (reused)")
    p.add_argument("--skip", default="", help="comma list of steps to skip: search, export, materialize")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print the section only")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.timing_threads = [int(t) for t in args.timing_threads.split(",")]
    t0 = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    base, sources, what, params = build_family(args.work, args)
    config = search_config(args.work, base, sources, write_task(args.work, args.items), args)
    search = merge = None
    if "search" not in skip:
        run_dir = args.work / "run"
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        search = run_search(config, run_dir, params, args)
        print(json.dumps({k: v for k, v in search.items() if k not in ("plan", "run")}, default=str), flush=True)
    if "export" not in skip and search is not None:
        merge = run_merge(best_recipe(search["run"]), args.work, params, args)
        print(json.dumps(merge), flush=True)
    rows = []
    if "materialize" not in skip:
        default = search["plan"].policy if search is not None else CachePolicy("shared", "histogram", "regenerated")
        policies = {"default (the search's)": default,
                    "caches nothing": CachePolicy("shared", "histogram", "regenerated")}
        if policies["default (the search's)"] == policies["caches nothing"]:
            policies = {"default (the search's) = caches nothing": default}
        rows = run_materialize(base, sources, policies, args)
    publish(args.out, "bench_realsize", report(what, search, merge, rows, args, time.perf_counter() - t0),
            write=not args.no_write)


if __name__ == "__main__":
    main()
