"""benchmarks/concentration.py on a hand-made predictions file."""

import json
import math

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def concentration():
    return load_benchmark("concentration")


def test_counts_by_hand(concentration, tmp_path, capsys):
    # three users, top-2 lists: [5, 6], [5, 7|17], [8, 5] (7 and 17 share a title); histories hold 6,
    # 17 (the second id of a title), 5 and 8; targets 9 (returned third), 5 (first), 7 (not returned)
    rows = [{"history": [1, 6], "items": [[5], [6], [9]], "target": 9},
            {"history": [17], "items": [[5], [7, 17]], "target": 5},
            {"history": [5, 8], "items": [[8], [5]], "target": 7}]
    run = tmp_path / "run"
    (run / "eval-test").mkdir(parents=True)
    (run / "eval-test" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = concentration.concentration(run / "eval-test" / "predictions.jsonl", k=2)
    # distinct in the top 2: {5, 6, 7, 8}; first items 5, 5, 8: two distinct, 5 first for 2 of 3 users;
    # history titles in the top 2: 1 (6), 1 (7|17), 2 (8 and 5): mean 4 / 3
    # NDCG@2 as decoded: only user 2 (rank 0): 1 / 3; with history titles dropped user 1's list is
    # [5, 9] (9 second: 1 / log2 3 = 0.6309) and user 2's [5]: (0.6309 + 1) / 3 = 0.5436
    assert c == {"users": 3, "distinct@2": 4, "distinct@1": 2, "top1_share": pytest.approx(2 / 3),
                 "in_history@2": pytest.approx(4 / 3), "ndcg@2": pytest.approx(1 / 3),
                 "ndcg@2_history_dropped": pytest.approx((1 / math.log2(3) + 1) / 3)}
    assert concentration.main([str(run), "--k", "2"]) == 0
    assert f"| {run} | 3 | 4 | 2 | 0.667 | 1.33 | 0.3333 | 0.5436 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="missing"):
        concentration.main([str(tmp_path / "nowhere")])
