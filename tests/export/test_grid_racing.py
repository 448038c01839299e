"""The export's fixed-recipe grids raced on calibration: who stops, what is logged, and what the report keeps."""

from __future__ import annotations

from pathlib import Path

from evomerge.config.search import ScoringConfig
from evomerge.execution.worker import Outcome
from evomerge.export.baselines import GridRace, logged_full, recipe_of
from evomerge.recipes import recipe_data
from evomerge.recipes.fixed import fixed_recipes
from evomerge.recipes.recipe import Recipe
from evomerge.run.racing import Chunks
from evomerge.scoring.normalize import Normalizer
from evomerge.scoring.result import TaskScore

from .conftest import TASKS, Serial, export_config, synthetic_run

ITEMS = 32  # per task


def quality(recipe: Recipe) -> float:
    """A task arithmetic member's chance of passing an item: best at λ 0.7, falling off on both sides."""
    return 0.9 - 0.6 * abs(recipe.default.params["lam"] - 0.7)


def graded(recipe: Recipe, split: str, what: str, items=None) -> Outcome:
    """Item i passes when its fixed difficulty is below the member's quality: members pass nested sets of items."""
    p = quality(recipe)
    scores = {}
    for t in TASKS:
        positions = range(ITEMS) if items is None else items.get(t, ())
        values = tuple(1.0 if ((i * 0.6180339887) % 1.0) < p else 0.0 for i in positions)
        if values:
            scores[t] = TaskScore(t, "acc", "none", {"acc": True}, {"acc,none": sum(values) / len(values)},
                                  {"acc,none": values})
    return Outcome(scores, tokens=10 * sum(len(s.per_item["acc,none"]) for s in scores.values()))


def test_a_member_stopped_early_is_below_the_best_on_its_full_score(tmp_path: Path, scored_family) -> None:
    run = synthetic_run(tmp_path / "run", export_config(scored_family, scoring=ScoringConfig(chunk_items=8)))
    norm = Normalizer((True, True), {"calibration": (0.9, 0.9), "heldout": (0.9, 0.9)})
    members = fixed_recipes(2)["task_arithmetic"]
    race = GridRace(run, Serial(graded), Chunks.plan({t: ITEMS for t in TASKS}, 8, seed=0), members)
    race.race(norm)

    def full(name: str) -> tuple[float, float]:
        member = next(m for m in members if m.name == name)
        scores = graded(recipe_of(run.config(), member), "calibration", "").scores
        return norm.rank(tuple(scores[t].value for t in TASKS), "calibration")

    best = max(full(m.name) for m in members)
    assert race.stopped  # the constructed grid has clear losers
    assert all(full(name) < best for name in race.stopped)
    assert all(items < 2 * ITEMS for items in race.stopped.values())


def test_a_stopped_member_is_logged_with_its_chunks_and_a_completed_one_in_document_order(tmp_path: Path,
                                                                                           scored_family) -> None:
    run = synthetic_run(tmp_path / "run", export_config(scored_family, scoring=ScoringConfig(chunk_items=8)))
    norm = Normalizer((True, True), {"calibration": (0.9, 0.9), "heldout": (0.9, 0.9)})
    members = fixed_recipes(2)["task_arithmetic"]
    race = GridRace(run, Serial(graded), Chunks.plan({t: ITEMS for t in TASKS}, 8, seed=0), members)
    race.race(norm)
    for m in members:
        want = recipe_data(recipe_of(run.config(), m))
        record = [r for r in run.baselines() if r.name == m.name][-1]
        if m.name in race.stopped:
            assert logged_full(run, m.name, "calibration", want) is None
            assert record.items == race.stopped[m.name] and record.tokens == 10 * record.items
        else:
            assert (record.items is None
                    and record.scores == graded(recipe_of(run.config(), m), "calibration", "").scores)
