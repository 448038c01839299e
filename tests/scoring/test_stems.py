"""Stems: the token prefixes several inputs share, chosen so the fewest tokens go through the model."""

from __future__ import annotations

from evomerge.scoring.fastlm import stem_lengths


def test_options_of_one_question_share_the_question() -> None:
    question = (5, 6, 7)
    assert stem_lengths([question] * 4, [6, 5, 7, 6]) == [3, 3, 3, 3]


def test_an_input_that_shares_nothing_has_no_stem() -> None:
    assert stem_lengths([(1, 2), (3, 4)], [4, 4]) == [0, 0]
    assert stem_lengths([(1, 2)], [4]) == [0]


def test_a_stem_never_goes_past_what_an_input_may_share() -> None:
    # the second input's first scored position is 2: it may share (1, 2), not the (1, 2, 3) of the others
    assert stem_lengths([(1, 2, 3), (1, 2), (1, 2, 3)], [6, 6, 6]) == [2, 2, 2]


def test_groups_keep_their_own_stems_where_that_saves_more() -> None:
    # one token common to all, four more per pair: two stems of 5 beat one stem of 1
    prefixes = [(1, 7, 7, 7, 7), (1, 7, 7, 7, 7), (1, 8, 8, 8, 8), (1, 8, 8, 8, 8)]
    assert stem_lengths(prefixes, [6] * 4) == [5] * 4


def test_one_shared_stem_beats_per_group_stems_where_that_saves_more() -> None:
    # four tokens common to all, one more per pair: one stem of 4 (12 tokens) beats two of 5 (14)
    prefixes = [(1, 2, 3, 4, 7), (1, 2, 3, 4, 7), (1, 2, 3, 4, 8), (1, 2, 3, 4, 8)]
    assert stem_lengths(prefixes, [6] * 4) == [4] * 4
