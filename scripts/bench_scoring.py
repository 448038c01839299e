#!/usr/bin/env python
"""Cost of scoring one candidate: evomerge's Scorer and naive ``lm_eval.simple_evaluate`` against the
floor, a bare batched forward pass over the same token sequences (DESIGN.md §6).

Per candidate the model's weights are overwritten in place (untimed), then three things are timed,
interleaved so that they share the machine's load:

- (a) ``Scorer.score()`` — requests built once (at construction, untimed), lm-eval's own request
  methods, filters, ``process_results`` and aggregations per candidate;
- (b) ``lm_eval.simple_evaluate`` with a fresh ``HFLM`` wrapper around the same model (the naive way:
  tasks, documents and requests rebuilt on every call; one ``TaskManager`` indexing the task folder is
  made once and passed in; ``bootstrap_iters=0``);
- (c) the floor: the same token sequences lm-eval feeds the model (``(context + continuation)[:-1]``
  from the Scorer's own tokenization), in lm-eval's order (longest first), the same batch size,
  right-padded to the longest in the batch, ``model(ids).logits`` under ``torch.no_grad()`` — no
  attention mask, as HFLM's own call — and nothing else (no log-softmax, no comparison).

Medians over candidates × repetitions; ratios both as median(a)/median(c) and as the median of the
per-candidate ratios. With (a) above the target (1.3× the floor) it profiles ``score()`` with cProfile
and lists the top costs.

Workload: ``zoo/seed0-llama`` when it exists (the base and the experts as candidates, the calibration
tasks ``zoo_<skill>``), else a tiny random Llama family with a character tokenizer and two
loglikelihood tasks built in a temporary folder (as ``tests/conftest.py``'s ``scored_family``).

    .venv/bin/python scripts/bench_scoring.py --reps 5
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as _dt
import logging
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path


from benchdoc import REPO, cpu_model, publish, shown  # noqa: E402 (first: sets the offline environment)

import torch  # noqa: E402

from evomerge.scoring.model import load_causal_lm  # noqa: E402
from evomerge.scoring.scorer import Scorer, load_tasks  # noqa: E402

TARGET = 1.3
ZOO_SKILLS = ("rev", "sort", "up", "dup")


# --- workloads ---------------------------------------------------------------------------------


def zoo_workload(root: Path) -> tuple[str, list[Path], Path, list[str]]:
    from evomerge.zoo.build import load_zoo

    zoo = load_zoo(root)
    tasks = [zoo.skills[s].task for s in ZOO_SKILLS if s in zoo.skills] or [f.task for f in zoo.skills.values()]
    models = [zoo.base, *zoo.experts.values()]
    return f"zoo `{shown(root)}` (base + {len(zoo.experts)} experts)", models, zoo.task_dir, tasks


def save_llama(path: Path, seed: int, size: str, base: Path | None = None, scale: float = 0.05) -> Path:
    """A random Llama: ``test`` = tests/conftest.py's (2 layers, d 16); ``zoo`` = the zoo's sizes
    (evomerge/zoo/model.py: d 96, ff 256, 4 layers, 4 heads, tied embeddings) with a 32-token vocabulary.
    With ``base``: the base plus seeded noise, whatever its size (tests/conftest.py's helper)."""
    from tests.conftest import save_tiny_llama

    if size == "test" or base is not None:
        return save_tiny_llama(path, seed, base=base, scale=scale)
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.zoo import model as zm

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=32, hidden_size=zm.DIM, intermediate_size=zm.FF, num_hidden_layers=zm.LAYERS, num_attention_heads=zm.HEADS,
        num_key_value_heads=zm.HEADS, max_position_embeddings=zm.MAX_LENGTH, tie_word_embeddings=True))
    model.save_pretrained(path, safe_serialization=True)
    return path


def tiny_workload(tmp: Path, n_items: int, size: str) -> tuple[str, list[Path], Path, list[str]]:
    from tests.conftest import save_char_tokenizer, write_tasks

    base = save_llama(tmp / "base", 0, size)
    models = [base] + [save_llama(tmp / n, i, size, base=base) for i, n in enumerate("abc", start=1)]
    for m in models:
        save_char_tokenizer(m)
    names = write_tasks(tmp / "tasks", n_items=n_items)
    tasks = [names["rev_calibration"], names["dup_calibration"]]
    shape = "2 layers, d 16" if size == "test" else "the zoo's sizes: 4 layers, d 96, ff 256, 4 heads, tied embeddings"
    return (f"no zoo built yet: a random Llama family ({shape}; vocab 32; base + 3 noisy copies), character tokenizer and "
            "tests/conftest.py's tasks"), models, tmp / "tasks", tasks


# --- the three ways ----------------------------------------------------------------------------


class Floor:
    """A bare batched forward over the Scorer's own token sequences, in lm-eval's order and batching."""

    def __init__(self, scorer: Scorer, model: torch.nn.Module, batch_size: int) -> None:
        types = set(scorer.requests)
        if types != {"loglikelihood"}:
            raise SystemExit(f"the floor handles loglikelihood requests only; these tasks have {sorted(types)}")
        seqs = []
        for inst in scorer.requests["loglikelihood"]:
            ctx, cont = inst.args
            c, k = scorer.lm._encode_pair(ctx, cont)  # noqa: SLF001 (the same tokens lm-eval uses)
            seqs.extend([tuple((c + k)[-(scorer.lm.max_length + 1):][:-1])] * inst.repeats)
        # lm-eval runs one forward per distinct input sequence (HFLM's Collator groups requests with the
        # same context + continuation[:-1] when logits_cache is on, its default), longest first
        seqs = sorted(set(seqs), key=lambda s: (-len(s), s))
        self.batches = []
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i : i + batch_size]
            width = len(chunk[0])
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, : len(s)] = torch.tensor(s)
            self.batches.append(ids.to(model.device))
        self.model = model
        self.n_sequences, self.n_tokens = len(seqs), sum(len(s) for s in seqs)

    def __call__(self) -> None:
        with torch.no_grad():
            for ids in self.batches:
                self.model(ids).logits


def naive(model, tokenizer, tasks: list[str], manager, batch_size: int) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=tasks,
                                      task_manager=manager, bootstrap_iters=0)
    return {t: {k: v for k, v in r.items() if "," in k and "_stderr" not in k} for t, r in out["results"].items()}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])


# --- report ------------------------------------------------------------------------------------


def machine() -> str:
    model = cpu_model()
    import lm_eval
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores, {model}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, lm_eval {getattr(lm_eval, '__version__', '?')}")




def profile_score(scorer: Scorer, calls: int, top: int) -> list[str]:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        scorer.score()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{_short(file)}:{line}({fn})"))
    rows.sort(reverse=True)
    out = [f"cProfile of {calls} `score()` calls, {1000 * total / calls:.1f} ms per call under the profiler; top {top} by own time:", "",
           "| function | own ms/call | cumulative ms/call | calls/score |", "|---|---:|---:|---:|"]
    for tt, ct, nc, name in rows[:top]:
        out.append(f"| `{name}` | {1000 * tt / calls:.2f} | {1000 * ct / calls:.2f} | {nc / calls:.0f} |")
    return out


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default=str(REPO / "zoo" / "seed0-llama"), help="zoo folder (tiny family when it has no zoo.json)")
    ap.add_argument("--tiny-items", type=int, default=100, help="items per task for the tiny family (2 tasks)")
    ap.add_argument("--tiny-size", choices=("zoo", "test"), default="zoo", help="model sizes of the fallback family")
    ap.add_argument("--reps", type=int, default=5, help="passes over the candidates")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--no-naive", action="store_true", help="skip (b), simple_evaluate")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    command = ".venv/bin/python scripts/bench_scoring.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(args.threads)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.disable(logging.WARNING)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="bench_scoring_") as tmpdir:
        if (Path(args.zoo) / "zoo.json").is_file():
            what, model_paths, task_dir, task_names = zoo_workload(Path(args.zoo))
        else:
            print(f"no zoo at {args.zoo}: using a tiny random Llama family", flush=True)
            what, model_paths, task_dir, task_names = tiny_workload(Path(tmpdir), args.tiny_items, args.tiny_size)
        model, tok = load_causal_lm(model_paths[0])
        states = []
        for p in model_paths:
            m, _ = load_causal_lm(p)
            states.append({k: v.detach().clone() for k, v in m.named_parameters()})
        n_params = sum(p.numel() for p in model.parameters())

        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        t0 = time.perf_counter()
        scorer = Scorer(model, tok, load_tasks(task_names, task_dir), batch_size=args.batch_size)
        build_s = time.perf_counter() - t0
        floor = Floor(scorer, model, args.batch_size)
        n_items = sum(len(s.per_item[f"{s.metric},{s.filter}"]) for s in scorer.score().values())

        # warm-up, and (a) == (b) on every candidate
        same = True
        for st in states:
            load_into(model, st)
            floor()
            ours = scorer.score()
            if not args.no_naive:
                ref = naive(model, tok, task_names, manager, args.batch_size)
                for t in task_names:
                    for k, v in ref[t].items():
                        same &= abs(ours[t].metrics[k] - v) <= 1e-9 * max(1.0, abs(v))

        times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        ratios: dict[str, list[float]] = {"a": [], "b": []}
        for rep in range(args.reps):
            for st in states:
                load_into(model, st)
                t = {}
                for key in ("c", "a", "b"):
                    if key == "b" and args.no_naive:
                        continue
                    s = time.perf_counter()
                    if key == "a":
                        scorer.score()
                    elif key == "b":
                        naive(model, tok, task_names, manager, args.batch_size)
                    else:
                        floor()
                    t[key] = time.perf_counter() - s
                    times[key].append(t[key])
                for key in ("a", "b"):
                    if key in t:
                        ratios[key].append(t[key] / t["c"])
            print(f"rep {rep + 1}/{args.reps}: median ms a {1000 * statistics.median(times['a']):.1f} "
                  f"c {1000 * statistics.median(times['c']):.1f}" + ("" if args.no_naive else f" b {1000 * statistics.median(times['b']):.1f}"), flush=True)

        med = {k: statistics.median(v) for k, v in times.items() if v}
        ratio_a = med["a"] / med["c"]
        prof_lines: list[str] = []
        if args.profile == "always" or (args.profile == "auto" and ratio_a > TARGET):
            prof_lines = profile_score(scorer, calls=max(5, 2 * len(states)), top=12)
    load_after = os.getloadavg()[0]

    n = len(times["c"])
    rows = [("(c) floor: bare batched forward, `torch.no_grad()`", "c"), ("(a) evomerge `Scorer.score()`", "a")]
    if not args.no_naive:
        rows.append(("(b) naive `lm_eval.simple_evaluate` per candidate", "b"))
    lines = [
        "## Scoring one candidate: Scorer vs. simple_evaluate vs. a bare forward (`scripts/bench_scoring.py`)",
        "",
        f"- date: {_dt.date.today().isoformat()}; machine: {machine()}; torch threads: {args.threads}",
        f"- load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} (other processes share the cores)",
        f"- command: `{command}`",
        f"- workload: {what}; {n_params:,} parameters; tasks {', '.join(task_names)}: {n_items} loglikelihood items, "
        f"{floor.n_sequences} distinct input sequences, {floor.n_tokens} tokens, batch size {args.batch_size} ({len(floor.batches)} batches)",
        f"- {len(states)} candidates × {args.reps} repetitions = {n} timings per row, after one warm-up pass; per candidate the weights "
        "are copied into the model in place (untimed); the three are timed back to back per candidate",
        f"- Scorer construction (tasks, documents, requests; once per worker): {1000 * build_s:.0f} ms",
        f"- (a) and (b) give the same metrics on every candidate: {'yes' if same else 'NO'}" if not args.no_naive else "- (b) skipped",
        "",
        "| way | median ms per candidate | × floor (ratio of medians) | × floor (median of per-candidate ratios) |",
        "|---|---:|---:|---:|",
    ]
    for label, key in rows:
        if key == "c":
            lines.append(f"| {label} | {1000 * med['c']:.1f} | 1.00 | 1.00 |")
        else:
            lines.append(f"| {label} | {1000 * med[key]:.1f} | {med[key] / med['c']:.2f} | {statistics.median(ratios[key]):.2f} |")
    lines += ["", f"Target (a) ≤ {TARGET}× the floor: {'met' if ratio_a <= TARGET else 'missed'} ({ratio_a:.2f}×)."]
    if prof_lines:
        lines += ["", *prof_lines]
    body = "\n".join(lines)
    publish(args.out, "bench_scoring", body, write=not args.no_write)


if __name__ == "__main__":
    main()
