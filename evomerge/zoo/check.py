"""Quality of a zoo: a fast greedy-exact-match scorer, fixed merges, and the zoo's four conditions.

The scorer computes lm-eval's ``acc`` for loglikelihood tasks (the greedy continuation equals the
answer) from one batched forward pass per skill, so the build can check itself in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from evomerge.zoo.skills import IGNORE, Item, batch

LAMBDAS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # task arithmetic's global scale, weight 1 per expert
OWN_MIN = 0.9  # an expert masters its skill
MARGIN = 0.2  # "clearly worse": at least this far below the skill's own expert
KEEP = 0.5  # mergeable: the best task-arithmetic λ keeps this fraction of every expert's score
ROOM = 0.05  # room for search: every fixed merge falls this far short of some expert

Table = dict[str, dict[str, float]]  # row ("base", "expert <skill>", a merge) -> skill -> accuracy


@torch.no_grad()
def exact_match(model: nn.Module, ids: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """Per item: is the argmax at every answer position the answer token?"""
    hits = []
    for i in range(0, len(ids), batch_size):
        predicted = model(ids[i : i + batch_size]).logits.argmax(-1)
        target = labels[i : i + batch_size]
        hits.append(((predicted == target) | (target == IGNORE)).all(1))
    return torch.cat(hits)


def score(model: nn.Module, items: Mapping[str, list[Item]]) -> dict[str, float]:
    return {skill: exact_match(model, *batch(its)).float().mean().item() for skill, its in items.items()}


def fixed_merges(base: dict[str, Tensor], experts: list[dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """The merges a user tries first (DESIGN.md §5 baselines): task arithmetic over a λ grid, uniform soup."""
    import evomerge.merge.methods  # noqa: F401  (registers the methods)
    from evomerge.merge.registry import get_method

    ones = [1.0] * len(experts)
    merges = {f"task_arithmetic lam={lam}": {
        name: get_method("task_arithmetic").fn(b, [e[name] for e in experts], weight=ones, lam=lam) for name, b in base.items()
    } for lam in LAMBDAS}
    merges["uniform soup"] = {name: get_method("linear").fn(None, [e[name] for e in experts], weight=ones) for name in base}
    return merges


def quality_table(base_dir: Path, expert_dirs: Mapping[str, Path], items: Mapping[str, list[Item]]) -> Table:
    """Accuracy of the base, each expert and each fixed merge of all experts, per skill."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).eval()
    base = load_file(base_dir / "model.safetensors")
    experts = {skill: load_file(folder / "model.safetensors") for skill, folder in expert_dirs.items()}
    rows = {"base": base, **{f"expert {s}": t for s, t in experts.items()}, **fixed_merges(base, list(experts.values()))}
    table = {}
    for row, tensors in rows.items():
        model.load_state_dict(tensors, strict=False)  # strict=False: the tied lm_head is not saved
        table[row] = score(model, items)
    return table


def conditions(table: Table) -> dict[str, tuple[bool, str]]:
    """The zoo's conditions (name -> (holds, evidence)): a zoo failing one cannot show search winning."""
    skills = list(table["base"])
    own = {s: table[f"expert {s}"][s] for s in skills}
    # How close each expert comes to another skill's own expert on that skill (distinct: far below).
    closest = {s: max(table[f"expert {s}"][t] - own[t] for t in skills if t != s) for s in skills}
    merges = [row for row in table if row != "base" and not row.startswith("expert ")]
    keeps = {m: min(table[m][s] / max(own[s], 1e-9) for s in skills) for m in merges if m.startswith("task_arithmetic")}
    best = max(keeps, key=keeps.get)
    short = {m: max(own[s] - table[m][s] for s in skills) for m in merges}
    return {
        "1 experts master their own skill and are clearly worse on the others": (
            all(own[s] >= OWN_MIN and closest[s] <= -MARGIN for s in skills),
            ", ".join(f"{s}: own {own[s]:.2f}, on others {closest[s]:+.2f} vs their expert" for s in skills),
        ),
        "2 the base is clearly worse than each expert on its skill": (
            all(table["base"][s] <= own[s] - MARGIN for s in skills),
            ", ".join(f"{s}: base {table['base'][s]:.2f} vs {own[s]:.2f}" for s in skills),
        ),
        "3 mergeable: the best task-arithmetic lambda keeps half of every expert's score": (
            keeps[best] >= KEEP, f"{best} keeps {keeps[best]:.2f} of the least-kept skill",
        ),
        "4 room for search: no fixed merge reaches every expert": (
            all(gap >= ROOM for gap in short.values()),
            ", ".join(f"{m}: {gap:.2f} short" for m, gap in short.items()),
        ),
    }


def format_table(table: Table) -> str:
    skills = list(table["base"])
    width = max(len(row) for row in table) + 2
    lines = ["".ljust(width) + "".join(f"{s:>7}" for s in skills)]
    lines += [row.ljust(width) + "".join(f"{acc[s]:7.2f}" for s in skills) for row, acc in table.items()]
    return "\n".join(lines)
