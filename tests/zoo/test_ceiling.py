"""The ceiling search: the cmaes strategy's own asks, over the genome of per-layer task-arithmetic weights."""

from __future__ import annotations

from pathlib import Path

from evomerge.config.search import ObjectiveConfig, ScoringConfig
from evomerge.strategies import Evaluation, make_strategy
from evomerge.zoo.ceiling import SIGMA0, WEIGHT_BOUNDS, ceiling_space, maximize, search_ceiling
from evomerge.zoo.check import ModelFamily


def tiny(scored_family: dict[str, Path]) -> ModelFamily:
    """Two of the tiny family's sources as experts of the two tiny tasks, on perplexity (random weights answer
    nothing right: their accuracy cannot be normalized)."""
    objectives = {s: ObjectiveConfig(task=f"tiny_{s}", heldout_task=f"tiny_{s}_heldout", metric="perplexity")
                  for s in ("rev", "dup")}
    return ModelFamily(scored_family["base"], {"rev": scored_family["a"], "dup": scored_family["b"]}, objectives,
                  ScoringConfig(task_path=scored_family["tasks"]))


def bowl(x: tuple[float, ...]) -> float:
    return -sum((v - 0.3) ** 2 for v in x)


def test_the_ceiling_evaluates_the_points_the_cmaes_strategy_asks() -> None:
    start = (0.5,) * 6
    history = maximize(bowl, 6, start, evaluations=30, seed=4)
    strategy = make_strategy("cmaes", 6, 1, seed=4, initial=[start], sigma0=SIGMA0)
    asked = []
    for _ in range(30):
        candidate = strategy.ask()
        assert candidate is not None
        asked.append(candidate.x)
        strategy.tell(candidate, Evaluation((bowl(candidate.x),)))
    assert [x for x, _ in history] == asked and history[0][0] == start
    assert [v for _, v in history] == [bowl(x) for x in asked]
    assert max(v for _, v in history) > bowl(start)  # the strategy is told, so it moves towards the optimum


def test_the_genome_is_one_weight_per_layer_group_and_expert(scored_family: dict[str, Path]) -> None:
    space = ceiling_space(tiny(scored_family))
    assert [g.name for g in space.genes[:2]] == ["embed/weight/0", "embed/weight/1"]
    assert space.units == ("embed", "layers.0", "layers.1", "final_norm", "lm_head")
    assert all((g.low, g.high) == WEIGHT_BOUNDS for g in space.genes) and space.dim == 10


def test_ceiling_records_its_budget_start_and_weights_within_bounds(scored_family: dict[str, Path]) -> None:
    result = search_ceiling(tiny(scored_family), 0.5, evaluations=8, seed=0)
    assert (result["evaluations"], result["start_lambda"], result["seed"]) == (8, 0.5, 0)
    assert result["heldout"] > result["start"] > 0  # the start is one of the candidates, and it was improved on
    assert list(result["weights"]) == ["embed", "layers.0", "layers.1", "final_norm", "lm_head"]
    assert all(list(w) == ["rev", "dup"] and all(0 <= x <= 2 for x in w.values()) for w in result["weights"].values())
