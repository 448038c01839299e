#!/usr/bin/env python
"""Cost of scoring one candidate, per lm-eval output type: evomerge's Scorer and naive
``lm_eval.simple_evaluate`` against a floor that does only the model's own work.

Tasks: the zoo's skills as tasks of each kind, written from the zoo's calibration JSONL by
``evomerge.zoo.tasks.write_skill_tasks`` (what the zoo ships): ``zoo_<skill>`` (loglikelihood),
``zoo_<skill>_mc`` (multiple choice), ``zoo_<skill>_gen`` (generate_until, two filters),
``zoo_<skill>_rolling`` (loglikelihood_rolling). Candidates: the zoo's base and experts; per candidate
the weights are copied into one model in place (untimed), then, per output type, three ways are timed
back to back so that they share the machine's load:

- Scorer: ``Scorer.score()`` on that type's tasks (requests built once at construction, untimed);
  metrics from lm-eval's own filters, ``process_results`` and aggregations.
- floor, log-likelihood types: a bare batched forward, ``model(ids).logits`` under ``torch.no_grad()``,
  over the distinct token sequences lm-eval feeds the model (captured from HFLM itself:
  ``(context + continuation)[:-1]``, rolling windows included), longest first, the same batch size,
  right-padded, no attention mask — and nothing else (no log-softmax, no comparison).
- floor, generation: a bare batched ``model.generate`` over the same prompts (HFLM's tokenization,
  order and left padding), greedy, with the same stopping: the tasks' stop sequences
  (``stop_strings``), the model's end-of-sequence ids and HFLM's ``max_length``.
- naive: ``lm_eval.simple_evaluate`` with a fresh ``HFLM`` per candidate (tasks, documents and requests
  rebuilt every call; one ``TaskManager`` made once; ``bootstrap_iters=0``).

Medians over candidates × repetitions; ratios as median(way)/median(floor) and as the median of the
per-candidate ratios. A type over its target is profiled (cProfile, top costs) unless --profile never.

    .venv/bin/python scripts/bench_scoring.py --reps 3
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
from functools import partial
from pathlib import Path
from typing import Any, Callable

from benchdoc import REPO, cpu_model, fail, publish, shown  # noqa: E402 (first: sets the offline environment)

import torch  # noqa: E402

from evomerge.scoring.fastlm import LoglikelihoodPlan, RollingPlan  # noqa: E402
from evomerge.scoring.model import load_causal_lm  # noqa: E402
from evomerge.scoring.scorer import Scorer, load_tasks  # noqa: E402
from evomerge.zoo.tasks import task_name, write_skill_tasks  # noqa: E402

TARGETS = {"loglikelihood": 1.0, "multiple_choice": 1.0, "generate_until": 1.3, "loglikelihood_rolling": None}


# --- floors ------------------------------------------------------------------------------------


def lm_eval_token_requests(scorer: Scorer) -> list[tuple[list[int], list[int]]]:
    """The (context, continuation) tokens HFLM scores for the Scorer's requests, windows included."""
    from lm_eval.models.huggingface import HFLM

    class Capture(HFLM):
        def _loglikelihood_tokens(self, requests, **kwargs):  # noqa: ANN001, ANN003
            captured.extend((ctx, cont) for _, ctx, cont in requests)
            return [(0.0, False)] * len(requests)

    captured: list[tuple[list[int], list[int]]] = []
    lm = Capture(pretrained=scorer.lm.model, tokenizer=scorer.lm.tokenizer, batch_size=scorer.lm.batch_size)
    for reqtype, instances in scorer.requests.items():
        getattr(lm, reqtype)(instances, disable_tqdm=True)
    return captured


class ForwardFloor:
    """A bare batched forward over the token sequences lm-eval feeds the model, in its order and batching."""

    def __init__(self, scorer: Scorer, model: torch.nn.Module, batch_size: int) -> None:
        longest = scorer.lm.max_length + 1
        # lm-eval runs one forward per distinct input (its Collator groups requests with the same
        # context + continuation[:-1]), longest first
        seqs = sorted({tuple((c + k)[-longest:][:-1]) for c, k in lm_eval_token_requests(scorer)},
                      key=lambda s: (-len(s), s))
        self.batches = []
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            ids = torch.zeros((len(chunk), len(chunk[0])), dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, : len(s)] = torch.tensor(s)
            self.batches.append(ids.to(model.device))
        self.model = model
        padded = sum(ids.numel() for ids in self.batches)
        self.what = (f"{len(seqs)} distinct input sequences, {sum(len(s) for s in seqs)} tokens ({padded} padded) in "
                     f"{len(self.batches)} forwards")

    def __call__(self) -> None:
        with torch.no_grad():
            for ids in self.batches:
                self.model(ids)


class GenerateFloor:
    """A bare batched ``model.generate`` over HFLM's prompts, with lm-eval's stopping."""

    def __init__(self, scorer: Scorer, model: torch.nn.Module, batch_size: int) -> None:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        lm = scorer.lm
        args = [inst.args for inst in scorer.requests["generate_until"]]
        if len({repr(kw) for _, kw in args}) != 1:
            raise SystemExit("the generation floor expects one set of generation_kwargs across the tasks")
        kwargs = normalize_gen_kwargs(args[0][1], lm.max_gen_toks)
        self.until = handle_stop_sequences(kwargs.pop("until", None),
                                           eos=lm.tok_decode(lm.eot_token_id, skip_special_tokens=False))
        self.max_gen_toks = kwargs.pop("max_gen_toks")
        contexts = sorted((ctx for ctx, _ in args), key=lambda c: (-len(lm.tok_encode(c)), c))  # HFLM's order
        self.batches = [lm.tok_batch_encode(contexts[i:i + batch_size],
                                            left_truncate_len=lm.max_length - self.max_gen_toks)
                        for i in range(0, len(contexts), batch_size)]
        self.model, self.tokenizer = model, lm.tokenizer
        self.what = f"{len(contexts)} prompts, {len(self.batches)} batches, stop sequences {self.until}"

    def __call__(self) -> None:
        with torch.no_grad():
            for ids, mask in self.batches:
                self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                    max_length=ids.shape[1] + self.max_gen_toks, stop_strings=self.until,
                                    tokenizer=self.tokenizer, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)


def naive(model: torch.nn.Module, tokenizer: Any, tasks: list[str], manager: Any,
          batch_size: int) -> dict[str, dict[str, float]]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
                                      tasks=tasks, task_manager=manager, bootstrap_iters=0)
    return {t: {k: v for k, v in r.items() if "," in k and "_stderr" not in k} for t, r in out["results"].items()}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])


# --- report ------------------------------------------------------------------------------------


def machine() -> str:
    import lm_eval
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores, {cpu_model()}, {gpu}; Python {platform.python_version()}, torch "
            f"{torch.__version__}, transformers {transformers.__version__}, lm_eval "
            f"{getattr(lm_eval, '__version__', '?')}")


def profile(call: Callable[[], Any], calls: int, top: int) -> list[str]:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        call()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = sorted(((tt, ct, nc, f"{_short(file)}:{line}({fn})")
                   for (file, line, fn), (cc, nc, tt, ct, _) in stats.stats.items()),  # type: ignore[attr-defined]
                  reverse=True)
    out = [f"cProfile of {calls} `score()` calls, {1000 * stats.total_tt / calls:.1f} ms per call under the profiler; "  # type: ignore[attr-defined]
           f"top {top} by own time:",
           "", "| function | own ms/call | cumulative ms/call | calls/score |", "|---|---:|---:|---:|"]
    out += [f"| `{name}` | {1000 * tt / calls:.2f} | {1000 * ct / calls:.2f} | {nc / calls:.0f} |"
            for tt, ct, nc, name in rows[:top]]
    return out


def _short(file: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def relative_difference(ours: dict[str, Any], ref: dict[str, dict[str, float]]) -> float:
    return max(abs(ours[t].metrics[k] - v) / max(1.0, abs(v)) for t in ref for k, v in ref[t].items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default=str(REPO / "zoo" / "seed0-llama"), help="a built zoo (evomerge zoo build)")
    ap.add_argument("--kinds", nargs="+", choices=list(TARGETS), default=list(TARGETS), help="output types to time")
    ap.add_argument("--reps", type=int, default=3, help="passes over the candidates")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--no-naive", action="store_true", help="skip simple_evaluate")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    command = ".venv/bin/python scripts/bench_scoring.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # HFLM's max_length beside the zoo's max_new_tokens warns on every batch
    from evomerge.errors import EvomergeError
    from evomerge.zoo import load_zoo

    try:
        zoo = load_zoo(args.zoo)
    except EvomergeError as e:
        fail(str(e))
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="bench_scoring_") as tmpdir:
        task_dir = Path(tmpdir)
        for skill, files in zoo.skills.items():
            write_skill_tasks(skill, {"calibration": files.calibration}, task_dir)
        model, tok = load_causal_lm(zoo.base)
        states = []
        for path in [zoo.base, *zoo.experts.values()]:
            m, _ = load_causal_lm(path)
            states.append({k: v.detach().clone() for k, v in m.named_parameters()})
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        names, scorers, floors, build_ms = {}, {}, {}, {}
        for kind in args.kinds:
            names[kind] = [task_name(skill, kind, "calibration") for skill in zoo.skills]
            t0 = time.perf_counter()
            scorers[kind] = Scorer(model, tok, load_tasks(names[kind], task_dir), batch_size=args.batch_size)
            build_ms[kind] = 1000 * (time.perf_counter() - t0)
            floors[kind] = (GenerateFloor if kind == "generate_until" else ForwardFloor)(
                scorers[kind], model, args.batch_size)

        # warm-up (the Scorer's first call builds its plans), and the Scorer against simple_evaluate
        worst = {kind: 0.0 for kind in args.kinds}
        for st in states:
            load_into(model, st)
            for kind in args.kinds:
                floors[kind]()
                ours = scorers[kind].score()
                if not args.no_naive:
                    worst[kind] = max(worst[kind], relative_difference(
                        ours, naive(model, tok, names[kind], manager, args.batch_size)))

        ways = ("floor", "scorer") + (() if args.no_naive else ("naive",))
        times = {(kind, w): [] for kind in args.kinds for w in ways}
        ratios = {(kind, w): [] for kind in args.kinds for w in ways}
        for rep in range(args.reps):
            for st in states:
                load_into(model, st)
                for kind in args.kinds:
                    calls = {"floor": floors[kind], "scorer": scorers[kind].score,
                             "naive": partial(naive, model, tok, names[kind], manager, args.batch_size)}
                    t = {}
                    for w in ways:
                        s = time.perf_counter()
                        calls[w]()
                        t[w] = time.perf_counter() - s
                        times[(kind, w)].append(t[w])
                    for w in ways:
                        ratios[(kind, w)].append(t[w] / t["floor"])
            print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                f"{kind} {statistics.median(times[(kind, 'scorer')]) / statistics.median(times[(kind, 'floor')]):.2f}x"
                for kind in args.kinds), flush=True)

        med = {key: statistics.median(v) for key, v in times.items()}
        prof_lines: list[str] = []
        for kind in args.kinds:
            missed = TARGETS[kind] is not None and med[(kind, "scorer")] / med[(kind, "floor")] > TARGETS[kind]
            if args.profile == "always" or (args.profile == "auto" and missed):
                head, *table = profile(scorers[kind].score, calls=2 * len(states), top=12)
                prof_lines += ["", f"**{kind}** — {head}", *table]
        n_params = sum(p.numel() for p in model.parameters())
        n_items = {kind: sum(len(docs) for docs in scorers[kind].docs.values()) for kind in args.kinds}
    load_after = os.getloadavg()[0]

    n = len(states) * args.reps
    lines = [
        "## Scoring one candidate, per output type: Scorer vs. simple_evaluate vs. the floor "
        "(`scripts/bench_scoring.py`)",
        "",
        f"- date: {_dt.date.today().isoformat()}; machine: {machine()}; torch threads: {args.threads}",
        f"- load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} (other processes share the "
        "cores)",
        f"- command: `{command}`",
        f"- workload: zoo `{shown(zoo.root)}`, {n_params:,} parameters; candidates: the base and {len(zoo.experts)} "
        f"experts; tasks of each type written from the zoo's calibration sets ({', '.join(zoo.skills)}); batch size "
        f"{args.batch_size}",
        f"- {len(states)} candidates × {args.reps} repetitions = {n} timings per cell, after one warm-up pass; per "
        "candidate the weights are copied into the model in place (untimed); floor, Scorer and naive are timed back to "
        "back per candidate and type",
        "- floor: log-likelihood types, a bare batched forward over lm-eval's own input sequences; generation, a bare "
        "batched `model.generate` over the same prompts and stopping (see the script's docstring)",
    ]
    for kind in args.kinds:
        plans = [p.windows if isinstance(p, RollingPlan) else p for p in scorers[kind].lm.plans.values()
                 if isinstance(p, (LoglikelihoodPlan, RollingPlan))]
        fed = "" if not plans else (f"; the Scorer feeds the model {sum(p.tokens() for p in plans)} tokens, padding "
                                    "and stems included")
        lines.append(f"- {kind}: tasks {', '.join(names[kind])}; {n_items[kind]} items; floor: "
                     f"{floors[kind].what}{fed}; Scorer construction (once per worker) {build_ms[kind]:.0f} ms"
                     + ("" if args.no_naive else "; largest difference of any metric from simple_evaluate's (relative "
                        f"where |value| > 1): {worst[kind]:.1e}"))
    lines += [
        "",
        "| output type | floor ms | Scorer ms | Scorer × floor | (median of per-candidate ratios) | naive ms | naive × "
        "floor | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind in args.kinds:
        f, s = med[(kind, "floor")], med[(kind, "scorer")]
        naive_cells = ("—", "—") if args.no_naive else (f"{1000 * med[(kind, 'naive')]:.1f}",
                                                        f"{med[(kind, 'naive')] / f:.2f}")
        target = TARGETS[kind]
        met = "—" if target is None else ("yes" if s / f <= target else "no")
        lines.append(f"| {kind} | {1000 * f:.1f} | {1000 * s:.1f} | **{s / f:.2f}** | "
                     f"{statistics.median(ratios[(kind, 'scorer')]):.2f} | {naive_cells[0]} | {naive_cells[1]} | "
                     f"{'—' if target is None else f'≤ {target}'} | {met} |")
    lines += prof_lines
    publish(args.out, "bench_scoring", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
