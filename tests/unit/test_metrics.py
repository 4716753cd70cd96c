import math

import pytest

from bearrec.metrics import hit, item_rank, ndcg, summarize, title_rank


def test_hand_computed_values():
    assert ndcg(0, 1) == 1.0 and ndcg(1, 5) == 1 / math.log2(3) and ndcg(5, 5) == 0.0
    assert hit(4, 5) == 1.0 and hit(5, 5) == 0.0 and hit(None, 10) == 0.0 and ndcg(None, 10) == 0.0
    # ranks 0, 2, miss, 9: HR@5 = 2/4; NDCG@5 = (1 + 1/2) / 4; HR@10 = 3/4; NDCG@10 adds 1/log2(11)
    got = summarize([0, 2, None, 9], [1, 5, 10])
    assert got["HR@1"] == 0.25 and got["NDCG@1"] == 0.25
    assert got["HR@5"] == 0.5 and got["NDCG@5"] == pytest.approx(1.5 / 4)
    assert got["HR@10"] == 0.75 and got["NDCG@10"] == pytest.approx((1.5 + 1 / math.log2(11)) / 4)


def test_perfect_and_empty_lists():
    assert summarize([0, 0, 0], [1, 10]) == {"HR@1": 1.0, "NDCG@1": 1.0, "HR@10": 1.0, "NDCG@10": 1.0}
    assert title_rank([], "A") is None and item_rank([], 3) is None
    assert summarize([None], [5]) == {"HR@5": 0.0, "NDCG@5": 0.0}
    with pytest.raises(ValueError):
        summarize([], [5])
    with pytest.raises(ValueError):
        summarize([0], [0])


def test_title_and_item_ranks_with_duplicate_titles():
    titles = ["B", "Red Pen", "C"]
    items = [(2,), (1, 4), (3,)]
    assert title_rank(titles, "Red Pen") == 1
    assert item_rank(items, 4) == 1 and item_rank(items, 1) == 1 and item_rank(items, 9) is None
