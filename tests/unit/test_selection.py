"""Epoch choice by hand: paired standard errors, the later-within-one-SE rule, the noise flag."""

import math

import pytest

from bearrec.selection import choose_epoch, paired_se, user_scores


def test_user_scores_are_ndcg_at_k():
    preds = [{"index": 4, "rank": 0}, {"index": 7, "rank": 2}, {"index": 9, "rank": None}, {"index": 1, "rank": 3}]
    assert user_scores(preds, 3) == {4: 1.0, 7: 0.5, 9: 0.0, 1: 0.0}


def test_paired_se_by_hand():
    # differences (1, 0, 0, -1): mean 0, sample variance 2/3, SE sqrt(2/3 / 4)
    a, b = {0: 1.0, 1: 0.5, 2: 0.0, 3: 0.0}, {0: 0.0, 1: 0.5, 2: 0.0, 3: 1.0}
    assert paired_se(a, b) == pytest.approx(math.sqrt(2 / 3 / 4))
    assert paired_se(a, a) == 0.0 and paired_se({0: 1.0}, {0: 0.0}) == 0.0


def test_a_later_epoch_within_one_se_wins_and_is_flagged():
    users = range(8)
    e1 = {u: 1.0 if u < 3 else 0.0 for u in users}  # mean 3/8
    e2 = {u: 0.0 for u in users}  # 0: below e1 by 3/8, paired SE 0.18
    e3 = {u: 1.0 if u in (0, 4) else 0.0 for u in users}  # 2/8; e1 - e3 per user (0, 1, 1, 0, -1, 0, 0, 0)
    # SE of d = (0, 1, 1, 0, -1, 0, 0, 0): var = (3 - 8/64) / 7 = 0.41071, SE = sqrt(0.41071 / 8) = 0.2266 > 1/8
    assert paired_se(e1, e3) == pytest.approx(math.sqrt((3 - 8 / 64) / 7 / 8))
    got = choose_epoch({1: e1, 2: e2, 3: e3})
    assert got["best_by_mean"] == 1 and got["epoch"] == 3 and got["within_noise"]
    assert got["nearest"] == 1 and got["gap"] == pytest.approx(-1 / 8)
    old = choose_epoch({1: e1, 2: e2, 3: e3}, rule="max")
    assert old["epoch"] == 1 and old["nearest"] == 3 and old["within_noise"]


def test_a_clear_winner_is_kept_and_not_flagged():
    users = range(100)
    best = {u: 1.0 if u < 40 else 0.0 for u in users}
    worse = {u: 1.0 if u < 5 else 0.0 for u in users}  # 35 fewer hits: far outside one SE
    for rule in ("later_within_se", "max"):
        got = choose_epoch({1: worse, 2: best, 3: worse}, rule)
        assert got["epoch"] == 2 and not got["within_noise"] and got["gap"] == pytest.approx(0.35)


def test_equal_means_max_keeps_the_earliest_and_the_new_rule_the_latest():
    a, b = {0: 1.0, 1: 0.0}, {0: 0.0, 1: 1.0}
    assert choose_epoch({1: a, 2: b}, "max")["epoch"] == 1
    assert choose_epoch({1: a, 2: b})["epoch"] == 2
    only = choose_epoch({3: a})
    assert only["epoch"] == 3 and only["nearest"] is None and not only["within_noise"]


def test_bad_rule_and_no_epochs():
    with pytest.raises(ValueError, match="selection rule"):
        choose_epoch({1: {0: 1.0}}, "latest")
    with pytest.raises(ValueError, match="no epoch"):
        choose_epoch({})
