"""Objectives read off task scores: reported vs search metric, filters, directions, per-item values."""

from __future__ import annotations

import math

import pytest

from evomerge.config.search import ObjectiveConfig
from evomerge.errors import EvomergeError
from evomerge.scoring.objectives import WORST, item_scores, nonfinite, oriented, per_item, raw_values
from evomerge.scoring.result import TaskScore

LL = (-0.1, -2.0, -0.5)  # per-item answer log-likelihoods


def score(task: str = "t", acc: float = 0.5, ppl: float = 1.7, strict: float = 0.25) -> TaskScore:
    return TaskScore(task, "acc", "none", {"acc": True, "perplexity": False, "exact_match": True},
                     {"acc,none": acc, "perplexity,none": ppl, "exact_match,strict": strict},
                     {"acc,none": (1.0, 0.0, 1.0), "perplexity,none": LL, "exact_match,strict": (0.0, 0.0, 1.0)})


def test_without_names_the_primary_metric_is_reported_and_searched() -> None:
    o = ObjectiveConfig("t")
    assert raw_values([o], {"t": score()}, "calibration") == (0.5,) and oriented([o], {"t": score()}) == (0.5,)


def test_the_search_metric_drives_the_strategy_while_the_metric_is_reported() -> None:
    o = ObjectiveConfig("t", metric="acc", search_metric="perplexity")
    assert raw_values([o], {"t": score()}, "calibration") == (0.5,)
    assert oriented([o], {"t": score()}) == (-1.7,)  # lower perplexity is better: negated


def test_a_named_filter_selects_that_filters_metric() -> None:
    o = ObjectiveConfig("t", metric="exact_match", filter="strict")
    assert raw_values([o], {"t": score()}, "calibration") == (0.25,)


def test_the_configured_direction_wins_over_lm_evals() -> None:
    assert oriented([ObjectiveConfig("t", direction="min")], {"t": score()}) == (-0.5,)


def test_per_item_scores_follow_the_search_metric() -> None:
    acc, ll = ObjectiveConfig("t"), ObjectiveConfig("t", search_metric="perplexity")
    assert item_scores(acc, score()) == (1.0, 0.0, 1.0)
    # per item, a log-likelihood counts as the answer's probability: in [0, 1], higher is better
    assert item_scores(ll, score()) == pytest.approx(tuple(math.exp(v) for v in LL))


def test_per_item_scores_of_a_failed_candidate_are_zeros_of_the_known_sizes() -> None:
    assert per_item([ObjectiveConfig("t"), ObjectiveConfig("u")], None, [3, 2]) == (0.0,) * 5


def test_a_metric_without_per_item_numbers_cannot_feed_niches() -> None:
    s = score()
    bare = TaskScore(s.task, s.metric, s.filter, s.higher_is_better, s.metrics, {})
    with pytest.raises(EvomergeError, match="has no per-item numbers"):
        item_scores(ObjectiveConfig("t"), bare)


def test_a_failed_candidate_is_worst_everywhere() -> None:
    assert oriented([ObjectiveConfig("t"), ObjectiveConfig("u")], None) == (WORST, WORST)


def test_a_non_finite_search_value_is_named() -> None:
    o = ObjectiveConfig("t", search_metric="perplexity")
    assert nonfinite([o], {"t": score(ppl=math.inf)}) == "objective 0 (t perplexity) is inf"
    assert nonfinite([ObjectiveConfig("t")], {"t": score(ppl=math.inf)}) is None  # a secondary metric may be inf
