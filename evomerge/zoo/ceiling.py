"""The zoo's ceiling: what per-layer × per-expert task-arithmetic weights reach when they are chosen on
the held-out items themselves.

No search is allowed to see held-out data, so this is not a result anyone can claim. It shows how
high per-layer weights can go on held-out, where a search scored on calibration can hardly do better,
and condition (c) asks exactly that: that the zoo leaves room beyond the best fixed recipe. CMA-ES (the ``cma`` package) over weights in [0, 2], one per
layer group (``evomerge.sources.layers``: embed, layers.<i>, final_norm) and expert, starts at the
best fixed task-arithmetic recipe (every weight = its λ) and keeps the best candidate it scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from evomerge.zoo.check import Scorer, normalized
from evomerge.zoo.skills import Item

WEIGHT_BOUNDS = (0.0, 2.0)
SIGMA0 = 0.3  # CMA-ES's initial step, in weight units: three steps of the λ grid


def search_ceiling(base_dir: Path, expert_dirs: Mapping[str, Path], items: Mapping[str, list[Item]],
                   own: Mapping[str, float], start_lambda: float, evaluations: int, seed: int,
                   log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Best mean normalized score found on ``items`` (normalized by ``own``) within ``evaluations``
    candidates (whole CMA-ES generations, the start point included), its weights, and the start's score."""
    import cma
    from safetensors.torch import load_file
    from transformers import AutoConfig

    import evomerge.merge.methods  # noqa: F401  (registers the methods)
    from evomerge.merge.registry import get_method
    from evomerge.sources.layers import group_of, layer_groups, num_layers

    task_arithmetic = get_method("task_arithmetic").fn
    base = load_file(base_dir / "model.safetensors")
    experts = [load_file(d / "model.safetensors") for d in expert_dirs.values()]
    skills = list(expert_dirs)
    n_layers = num_layers(AutoConfig.from_pretrained(base_dir, local_files_only=True).to_dict(), base)
    groups = layer_groups(base, n_layers)
    group = {name: groups.index(group_of(name, n_layers)) for name in base}
    scorer = Scorer(base_dir, items)

    def value(x: list[float]) -> float:
        """Task arithmetic (the project's method, λ 1) with the weights of each tensor's layer group."""
        w = [list(map(float, x[i * len(skills) : (i + 1) * len(skills)])) for i in range(len(groups))]
        merged = {name: task_arithmetic(b, [e[name] for e in experts], weight=w[group[name]]) for name, b in base.items()}
        return normalized(scorer(merged), own)

    x0 = [start_lambda] * (len(groups) * len(skills))
    best_x, best = x0, value(x0)
    start, count = best, 1
    # cma reads seed 0 as "seed from the clock": shift it so every seed, 0 included, fixes the run.
    es = cma.CMAEvolutionStrategy(x0, SIGMA0, {"bounds": list(WEIGHT_BOUNDS), "seed": seed + 1, "verbose": -9})
    while count + es.popsize <= evaluations:
        xs = es.ask()
        values = [value(list(x)) for x in xs]
        es.tell(xs, [-v for v in values])
        count += len(xs)
        i = max(range(len(values)), key=values.__getitem__)
        if values[i] > best:
            best_x, best = [float(v) for v in xs[i]], values[i]
        log(f"ceiling: {count} evaluations, best {best:.4f}")
    weights = {g: {s: round(best_x[i * len(skills) + k], 4) for k, s in enumerate(skills)} for i, g in enumerate(groups)}
    return {"heldout": round(best, 4), "start": round(start, 4), "start_lambda": start_lambda,
            "budget": evaluations, "evaluations": count, "seed": seed, "weights": weights}
