"""Quality of a zoo: a fast exact-match scorer, the fixed merges a user tries first, and the zoo's conditions.

The scorer computes lm-eval's ``acc`` for loglikelihood tasks (the greedy continuation equals the
answer) from batched forward passes, so the build can score its 106 fixed merges in minutes.

A merge's score is *mean normalized* accuracy: per skill, its accuracy divided by that skill's own
expert's accuracy on the same items, averaged over the skills (1.0 = every expert kept whole).
"""

from __future__ import annotations

from concurrent.futures import Executor
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from evomerge.errors import EvomergeError
from evomerge.recipes.fixed import DENSITIES, LAMBDAS
from evomerge.zoo.skills import IGNORE, Item, batch

# The fixed recipes, each kind's setting chosen on calibration: task arithmetic over the λ grid, TIES
# and DARE-TIES over densities × that grid (the grids every run report uses, evomerge.recipes.fixed),
# and the uniform soup (the plain average of the experts).
FIXED_KINDS = ("task_arithmetic", "ties", "dare_ties", "uniform_soup")
# The conditions: (a) distinct experts over a base that lacks their skills; (b) no fixed recipe is
# nearly as good as the experts; (c) per-layer weights can be (the ceiling, scripts/zoo_ceiling.py).
OWN_MIN = 0.95
BASE_GAP = 0.40
FIXED_MAX = 0.85
ROOM = 0.12
EPS = 1e-9  # the bounds are inclusive: 0.95 - 0.40 must not fail on float rounding
CONDITIONS = {
    "a": "a: each expert >= 0.95 on its skill, the base >= 0.40 below it",
    "b": "b: the best fixed recipe keeps <= 0.85 mean normalized on held-out",
    "c": "c: a per-layer search on held-out (the ceiling) reaches >= best fixed + 0.12",
}

Table = dict[str, dict[str, float]]  # row ("base", "expert <skill>", a fixed recipe) -> skill -> accuracy
Setting = dict[str, float]  # a fixed recipe's hyperparameters: {"density": 0.5, "lambda": 0.4}


@torch.no_grad()
def exact_match(model: nn.Module, ids: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """Per item: is the argmax at every answer position the answer token?"""
    hits = []
    for i in range(0, len(ids), batch_size):
        predicted = model(ids[i : i + batch_size]).logits.argmax(-1)
        target = labels[i : i + batch_size]
        hits.append(((predicted == target) | (target == IGNORE)).all(1))
    return torch.cat(hits)


class Scorer:
    """Accuracy per skill of any weights of the zoo's architecture on fixed item sets.

    Items are batched once, sorted by length ``BUCKET`` at a time, so each batch is padded only to its
    own longest item (a quarter less time than one batch per skill, measured on 512 items per skill).
    """

    BUCKET = 128

    def __init__(self, template_dir: Path, items: Mapping[str, list[Item]]) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(template_dir, local_files_only=True).eval()
        self.batches = {}
        for skill, its in items.items():
            ordered = sorted(its, key=lambda it: len(it["prompt"]) + len(it["answer"]))
            self.batches[skill] = [batch(ordered[i : i + self.BUCKET]) for i in range(0, len(ordered), self.BUCKET)]

    def __call__(self, tensors: Mapping[str, Tensor]) -> dict[str, float]:
        self.model.load_state_dict(tensors, strict=False)  # strict=False: the tied lm_head is not saved
        out = {}
        for skill, batches in self.batches.items():
            hits = sum(int(exact_match(self.model, ids, labels).sum()) for ids, labels in batches)
            out[skill] = hits / sum(len(ids) for ids, _ in batches)
        return out


def normalized(acc: Mapping[str, float], own: Mapping[str, float]) -> float:
    """Mean over skills of accuracy ÷ the skill's own expert's accuracy on the same items."""
    return sum(acc[s] / max(own[s], 1e-9) for s in own) / len(own)


def own_scores(table: Table) -> dict[str, float]:
    """Each skill's own expert's accuracy, from a table's ``expert <skill>`` rows."""
    return {s: table[f"expert {s}"][s] for s in table["base"]}


def settings(kind: str, lambdas: Sequence[float] = LAMBDAS, densities: Sequence[float] = DENSITIES) -> list[Setting]:
    """The grid a kind's setting is chosen from."""
    if kind == "task_arithmetic":
        return [{"lambda": lam} for lam in lambdas]
    if kind in ("ties", "dare_ties"):
        return [{"density": d, "lambda": lam} for d in densities for lam in lambdas]
    if kind == "uniform_soup":
        return [{}]
    raise ValueError(f"unknown fixed recipe kind {kind!r}")


def label(kind: str, setting: Setting) -> str:
    """A fixed recipe's row name: ``ties density=0.5 lambda=0.4``."""
    return " ".join([kind, *(f"{k}={v:g}" for k, v in setting.items())])


def fixed_merge(kind: str, setting: Setting, base: Mapping[str, Tensor], experts: list[Mapping[str, Tensor]],
                seed: int) -> dict[str, Tensor]:
    """One fixed recipe of all experts, weight 1 each, through the project's own merge methods.

    DARE's draws are the common random numbers a search with this ``seed`` would use.
    """
    import evomerge.merge.methods  # noqa: F401  (registers the methods)
    from evomerge.merge.draws import uniform_draws
    from evomerge.merge.registry import get_method

    ones = [1.0] * len(experts)
    out = {}
    for name, b in base.items():
        sources = [e[name] for e in experts]
        if kind == "uniform_soup":
            out[name] = get_method("linear").fn(None, sources, weight=ones)
            continue
        kwargs: dict[str, Any] = {"weight": ones, "lam": setting["lambda"]}
        if "density" in setting:
            kwargs["density"] = [setting["density"]] * len(experts)
        if kind == "dare_ties":
            kwargs["draws"] = [uniform_draws(seed, name, k, b.shape) for k in range(len(experts))]
        out[name] = get_method(kind).fn(b, sources, **kwargs)
    return out


def grid(lambdas: Sequence[float] = LAMBDAS, densities: Sequence[float] = DENSITIES) -> list[tuple[str, Setting]]:
    """Every fixed recipe the check tries, kind by kind, each kind's settings in grid order."""
    return [(kind, setting) for kind in FIXED_KINDS for setting in settings(kind, lambdas, densities)]


def grid_accuracy(base_dir: Path, expert_dirs: Mapping[str, Path], items: Mapping[str, list[Item]], seed: int,
                  candidates: Sequence[tuple[str, Setting]]) -> list[dict[str, float]]:
    """Accuracy per skill of each fixed recipe in ``candidates``; it loads what it needs, so a worker
    process can score its share of the grid."""
    base, experts = _load(base_dir, expert_dirs)
    scorer = Scorer(base_dir, items)
    return [scorer(fixed_merge(kind, setting, base, list(experts.values()), seed)) for kind, setting in candidates]


def choose(candidates: Sequence[tuple[str, Setting]], values: Sequence[float]) -> dict[str, tuple[Setting, float]]:
    """Per kind, the setting with the highest value; among equals the first in grid order."""
    best: dict[str, tuple[Setting, float]] = {}
    for (kind, setting), value in zip(candidates, values, strict=True):
        if kind not in best or value > best[kind][1]:
            best[kind] = (setting, value)
    return best


def quality(base_dir: Path, expert_dirs: Mapping[str, Path], calibration: Mapping[str, list[Item]],
            heldout: Mapping[str, list[Item]], seed: int, lambdas: Sequence[float] = LAMBDAS,
            densities: Sequence[float] = DENSITIES, pool: Executor | None = None, parts: int = 1) -> dict[str, Any]:
    """Base, experts and the fixed recipes (chosen on calibration over the λ and density grids) scored
    on both splits; with a ``pool``, the grid is scored in ``parts`` shares on it.

    Returns ``{"table": held-out rows, "calibration_table": calibration rows, "fixed": kind ->
    {"setting", "row", "calibration", "heldout"}}``; the ``fixed`` scores are mean normalized.
    """
    candidates = grid(lambdas, densities)
    shares = [candidates[i::parts] for i in range(parts)]  # interleaved: every share gets some of each kind
    run = partial(grid_accuracy, base_dir, dict(expert_dirs), calibration, seed)
    results = pool.map(run, shares) if pool is not None else map(run, shares)  # a pool starts at once
    base, experts = _load(base_dir, expert_dirs)
    on = {"calibration": Scorer(base_dir, calibration), "heldout": Scorer(base_dir, heldout)}
    tables: dict[str, Table] = {split: {"base": score(base)} for split, score in on.items()}
    for split, score in on.items():
        tables[split].update({f"expert {s}": score(t) for s, t in experts.items()})
    own = {split: own_scores(table) for split, table in tables.items()}
    accuracy: list[dict[str, float]] = [{}] * len(candidates)
    for i, share in enumerate(results):
        accuracy[i::parts] = share
    fixed = {}
    for kind, (setting, value) in choose(candidates, [normalized(a, own["calibration"]) for a in accuracy]).items():
        row = label(kind, setting)
        tables["calibration"][row] = accuracy[candidates.index((kind, setting))]
        tables["heldout"][row] = on["heldout"](fixed_merge(kind, setting, base, list(experts.values()), seed))
        fixed[kind] = {"setting": setting, "row": row, "calibration": round(value, 4),
                       "heldout": round(normalized(tables["heldout"][row], own["heldout"]), 4)}
    return {"table": tables["heldout"], "calibration_table": tables["calibration"], "fixed": fixed}


def _load(base_dir: Path, expert_dirs: Mapping[str, Path]) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    from safetensors.torch import load_file

    return load_file(base_dir / "model.safetensors"), {s: load_file(d / "model.safetensors") for s, d in expert_dirs.items()}


def best_fixed(q: Mapping[str, Any]) -> tuple[str, float]:
    """The fixed recipe kind with the best held-out score, and that score."""
    kind = max(q["fixed"], key=lambda k: q["fixed"][k]["heldout"])
    return kind, q["fixed"][kind]["heldout"]


def conditions(q: Mapping[str, Any]) -> dict[str, tuple[bool | None, str]]:
    """Name -> (holds, evidence) for (a), (b), (c) on a zoo's quality record; (c) is None until a
    ceiling (``q["ceiling"]["heldout"]``) is recorded. A zoo failing one cannot show search winning."""
    table = q["table"]
    own = own_scores(table)
    base = table["base"]
    kind, best = best_fixed(q)
    fixed = ", ".join(f"{f['row']} {f['heldout']:.3f}" for f in q["fixed"].values())
    out: dict[str, tuple[bool | None, str]] = {
        CONDITIONS["a"]: (
            all(own[s] >= OWN_MIN - EPS and own[s] - base[s] >= BASE_GAP - EPS for s in own),
            ", ".join(f"{s}: expert {own[s]:.3f}, base {base[s]:.3f}" for s in own),
        ),
        CONDITIONS["b"]: (best <= FIXED_MAX + EPS, f"best {kind} {best:.3f} (held-out; {fixed})"),
    }
    if "ceiling" in q:
        ceiling = q["ceiling"]["heldout"]
        room = ceiling - best
        out[CONDITIONS["c"]] = (room >= ROOM - EPS, f"ceiling {ceiling:.3f} vs best fixed {best:.3f} ({room:+.3f})")
    else:
        out[CONDITIONS["c"]] = (None, "not checked yet: run scripts/zoo_ceiling.py on the zoo")
    return out


def require(verdicts: Mapping[str, Mapping[str, Any]], what: str) -> None:
    """Raise EvomergeError naming each condition that failed (``holds`` False; None is not judged yet)."""
    failed = [f"{name} ({v['evidence']})" for name, v in verdicts.items() if v["holds"] is False]
    if failed:
        raise EvomergeError(f"{what} misses condition {'; '.join(failed)}; try another --seed")


def format_table(table: Table) -> str:
    skills = list(table["base"])
    width = max(len(row) for row in table) + 2
    lines = ["".ljust(width) + "".join(f"{s:>7}" for s in skills)]
    lines += [row.ljust(width) + "".join(f"{acc[s]:7.3f}" for s in skills) for row, acc in table.items()]
    return "\n".join(lines)
