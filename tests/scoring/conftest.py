"""The zoo's skills as lm-eval tasks of every kind, its models in float64, and lm-eval's own results.

Models run in float64: the Scorer's arithmetic is exact but not lm-eval's (shared stems, logits read
where they are scored, sums in another order), so in float32 the two agree to about 1e-7; in float64
the difference sits far below the 1e-9 the tests ask for, and a real difference would not.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from evomerge.zoo.tasks import KINDS, task_name, write_skill_tasks

SKILLS = ("rev", "up")  # two tasks per kind: requests of several tasks share one plan


@pytest.fixture(scope="session")
def zoo_tasks(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every kind of task for SKILLS, written from the zoo's calibration data."""
    from evomerge.zoo import load_zoo

    zoo, folder = load_zoo(zoo_dir), tmp_path_factory.mktemp("zoo_tasks")
    for skill in SKILLS:
        write_skill_tasks(skill, {"calibration": zoo.skills[skill].calibration}, folder)
    return folder


def names(kind: str) -> list[str]:
    return [task_name(skill, kind, "calibration") for skill in SKILLS]


ALL_NAMES = [name for kind in KINDS for name in names(kind)]


def load_float64(folder: Path) -> tuple[Any, Any]:
    from evomerge.scoring.model import load_causal_lm

    model, tokenizer = load_causal_lm(folder)
    return model.double(), tokenizer


@pytest.fixture
def base_float64(zoo_dir: Path) -> tuple[Any, Any]:
    """The zoo's base (it half-knows every skill: some answers right, some wrong) in float64."""
    return load_float64(zoo_dir / "models" / "base")


def simple_evaluate(model: Any, tokenizer: Any, tasks: list[str], task_path: Path, **options: Any) -> dict[str, Any]:
    """lm-eval's own results: per task its metrics ("metric,filter" -> value) and its samples' prompts."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # simple_evaluate's default is True; the Scorer's is lm-eval's evaluate()'s
    options.setdefault("fewshot_as_multiturn", False)
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        out = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16), tasks=tasks,
                                      task_manager=TaskManager(include_path=str(task_path), include_defaults=False),
                                      bootstrap_iters=0, **options)
    return {
        "metrics": {t: {k: v for k, v in r.items() if "," in k and "_stderr" not in k}
                    for t, r in out["results"].items()},
        "prompts": {t: prompts(args for s in samples for args in s["arguments"])
                    for t, samples in out["samples"].items()},
    }


def prompts(arguments: Any) -> list[str]:
    """Request arguments (context, continuation or generation settings) as comparable text, once each."""
    return sorted({repr(tuple(args)) for args in arguments})
