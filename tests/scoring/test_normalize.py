"""Normalization against the best source model, on hand-made scores."""

from __future__ import annotations

import math

from evomerge.scoring.normalize import Normalizer


def test_normalized_score_is_relative_to_the_best_source_on_that_task() -> None:
    norm = Normalizer.from_sources([True, False], {"heldout": [(0.8, 4.0), (0.4, 2.0), None]})
    assert norm.reference["heldout"] == (0.8, 2.0)  # best source per objective: max acc, min loss
    assert norm.normalize((0.4, 4.0), "heldout") == (0.5, 0.5)
    assert norm.normalize((0.8, 2.0), "heldout") == (1.0, 1.0)  # as good as the best expert
    assert norm.mean((1.2, 1.0), "heldout") == (1.5 + 2.0) / 2
    # a reference of 0 cannot be divided by: that objective is skipped in the mean
    zero = Normalizer.from_sources([True, True], {"heldout": [(0.0, 0.5)]})
    assert math.isnan(zero.normalize((0.3, 0.25), "heldout")[0])
    assert zero.mean((0.3, 0.25), "heldout") == 0.5


def test_best_is_the_highest_mean_normalized_member_the_first_among_equals_and_a_failure_last() -> None:
    norm = Normalizer.from_sources([True, False], {"calibration": [(0.8, 2.0)]})
    members = [("failed", None), ("weak", (0.4, 4.0)), ("strong", (0.8, 4.0)), ("strong again", (0.8, 4.0))]
    assert norm.best(members, "calibration") == "strong"  # mean normalized 0.75 against 0.5; the first of equals
    assert norm.best(members[:2], "calibration") == "weak"  # any score ranks above a failure
