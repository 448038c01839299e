"""Scorer: lm-eval's own metrics, computed with requests built once and weights changed in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.scoring.model import load_causal_lm
from evomerge.scoring.scorer import Scorer, load_tasks

TASKS = ["tiny_rev", "tiny_dup"]


def simple_evaluate(model, tokenizer, task_path: Path) -> dict[str, dict[str, float]]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), tasks=TASKS,
                                  task_manager=TaskManager(include_path=str(task_path), include_defaults=False), bootstrap_iters=0)
    return {t: {k: v for k, v in r.items() if "," in k and "_stderr" not in k} for t, r in out["results"].items()}


def test_scores_equal_lm_eval_simple_evaluate(scored_family) -> None:
    model, tok = load_causal_lm(scored_family["a"])
    ours = Scorer(model, tok, load_tasks(TASKS, scored_family["tasks"]), batch_size=8).score()
    reference = simple_evaluate(model, tok, scored_family["tasks"])
    for task in TASKS:
        assert ours[task].metrics == pytest.approx(reference[task], rel=1e-9)


def test_primary_metric_is_the_first_of_metric_list(scored_family) -> None:
    model, tok = load_causal_lm(scored_family["a"])
    score = Scorer(model, tok, load_tasks(["tiny_rev"], scored_family["tasks"])).score()["tiny_rev"]
    assert score.metric == "acc" and score.higher_is_better == {"acc": True, "perplexity": False}
    assert score.filter == "none" and len(score.per_item["acc,none"]) == 12


def test_changing_weights_in_place_changes_the_next_score(scored_family) -> None:
    model, tok = load_causal_lm(scored_family["base"])
    scorer = Scorer(model, tok, load_tasks(TASKS, scored_family["tasks"]))
    before = scorer.score()["tiny_rev"].metrics["perplexity,none"]
    other, _ = load_causal_lm(scored_family["a"])
    with torch.no_grad():
        for p, q in zip(model.parameters(), other.parameters()):
            p.copy_(q)
    after = scorer.score()["tiny_rev"].metrics["perplexity,none"]
    fresh = Scorer(other, tok, load_tasks(TASKS, scored_family["tasks"])).score()["tiny_rev"].metrics["perplexity,none"]
    assert after != before and after == pytest.approx(fresh, rel=1e-9)


def test_unknown_task_names_the_task(scored_family) -> None:
    with pytest.raises(EvomergeError, match="no_such_task"):
        load_tasks(["no_such_task"], scored_family["tasks"])
