"""Reference points (bearrec.references): the popularity ranking, the model-vs-reference summary and
its sentence, worked out by hand."""

import json
import math

import pytest

from bearrec.config import ConfigError, load_config
from bearrec.references import markdown, popularity_ranking, sentence, summarize


class _Trie:
    def __init__(self, terminal_items):
        self.terminal_items = terminal_items

    def items_at(self, node):
        return self.terminal_items.get(node, ())


def test_popularity_ranks_titles_by_target_count_ties_by_smallest_item():
    # node 10 holds items 1 and 7 (one title twice): 2 + 1 = 3 targets; node 11 (item 2): 3 targets;
    # node 12 (item 5): 1; node 13 (item 9): never a target, so never ranked.
    trie = _Trie({10: (1, 7), 11: (2,), 12: (5,), 13: (9,)})
    targets = [2, 1, 5, 2, 7, 1, 2]
    # 10 and 11 tie at 3: node 10's smallest item (1) beats node 11's (2)
    assert popularity_ranking(targets, trie, k=10) == [(10, 3), (11, 3), (12, 1)]
    assert popularity_ranking(targets, trie, k=2) == [(10, 3), (11, 3)]
    assert popularity_ranking([], trie, k=5) == []


def _write(folder, ranks, user_ids=None):
    folder.mkdir(parents=True)
    rows = [{"index": i, "rank": r} if user_ids is None else {"index": i, "user_id": user_ids[i], "rank": r}
            for i, r in enumerate(ranks)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_interval_draws_rows_of_one_user_id_together(tmp_path):
    from bearrec.metrics import ndcg
    from bearrec.stats import user_bootstrap

    model, ref, ids = [0, 1, None, 12, 0, 3], [None, 1, 0, 3, None, None], ["a", "a", "a", "b", "b", "c"]
    _write(tmp_path / "eval-test", model, ids)
    _write(tmp_path / "ref-popularity", ref, ids)
    got = summarize(tmp_path, k=10, samples=300)["rows"]["popularity"]["model_minus"]
    want = user_bootstrap({i: ndcg(r, 10) for i, r in enumerate(model)}, {i: ndcg(r, 10) for i, r in enumerate(ref)},
                          samples=300, clusters=dict(enumerate(ids)))
    assert want["clusters"] == 3 and (got["low"], got["high"]) == (want["low"], want["high"])
    assert "3 user ids drawn" in markdown(summarize(tmp_path, k=10, samples=50))[0]


def test_summary_counts_hits_and_ndcg_per_reference(tmp_path):
    # model: ranks 0, 1, None, 12 -> hits@10 2, NDCG@10 (1 + 1/log2(3)) / 4
    _write(tmp_path / "eval-test", [0, 1, None, 12])
    _write(tmp_path / "ref-popularity", [None, None, None, 3])  # NDCG@10 (1/log2(5)) / 4
    s = summarize(tmp_path, k=10, samples=200)
    model, pop = s["rows"]["model"], s["rows"]["popularity"]
    assert (model["users"], model["hits"], model["hr"]) == (4, 2, 0.5)
    assert model["ndcg"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert (pop["hits"], pop["ndcg"]) == (1, pytest.approx(1 / math.log2(5) / 4))
    assert pop["model_minus"]["mean"] == pytest.approx(model["ndcg"] - pop["ndcg"])
    assert "zero_shot" not in s["rows"]
    table = markdown(s)
    assert table[2].startswith("| this model (chosen epoch) | 4 | 2 | 0.5000 |")
    assert table[3].startswith("| most popular training targets | 4 | 1 | 0.2500 |")


def test_summary_is_none_without_a_reference_and_refuses_other_users(tmp_path):
    _write(tmp_path / "eval-test", [0, 1])
    assert summarize(tmp_path) is None
    _write(tmp_path / "ref-zero_shot", [0])
    with pytest.raises(ValueError, match="other test users than eval-test"):
        summarize(tmp_path)


def _summary(pop_ci, zero_ci):
    row = {"users": 100, "hits": 5, "hr": 0.05, "ndcg": 0.02}
    return {"k": 10, "rows": {"model": row,
                              "popularity": {**row, "hits": 1, "model_minus": dict(zip(("mean", "low", "high"), pop_ci))},
                              "zero_shot": {**row, "hits": 0, "model_minus": dict(zip(("mean", "low", "high"), zero_ci))}}}


def test_sentence_says_what_the_intervals_say():
    learned = sentence(_summary((0.01, 0.002, 0.02), (0.02, 0.01, 0.03)), "bear")
    assert learned.startswith("Fine-tuned with bear, the model put the held-out next item in its top 10 for 5 of 100")
    assert "most popular training targets did for 1, the untrained model (zero-shot) for 0" in learned
    assert "It learned" in learned
    tied = sentence(_summary((0.01, -0.001, 0.02), (0.02, 0.01, 0.03)), "msl")
    assert "not distinguishable from the most popular training targets on these users" in tied
    assert "It learned" not in tied
    behind = sentence(_summary((-0.01, -0.02, -0.001), (0.02, 0.01, 0.03)), "sft")
    assert "did worse than the most popular training targets" in behind


def test_an_unknown_reference_is_refused_where_it_is_set():
    with pytest.raises(ConfigError, match=r"analysis.references\[1\]: 'random' is not one of"):
        load_config(None, ["analysis.references=[popularity,random]"])


def test_popularity_skips_each_users_history_titles_when_the_decode_does():
    from types import SimpleNamespace

    from bearrec.data.catalogue import Example
    from bearrec.references import popularity_predictions

    # titles (trie terminals): node 10 = items 1 and 7 (one title), 11 = item 2, 12 = item 5, 13 = item 9
    trie = _Trie({10: (1, 7), 11: (2,), 12: (5,), 13: (9,)})
    titles = {1: "A", 7: "A", 2: "B", 5: "C", 9: "D"}
    encoder = SimpleNamespace(trie=trie, catalogue=SimpleNamespace(title=titles.__getitem__))
    # target counts: B 3, A 2, C 1, D 1 (C before D: item 5 < 9)
    train = [Example("u", (), t, 0) for t in (2, 2, 2, 1, 7, 5, 9)]
    test = [Example("x", (3, 7), 5, 0), Example("y", (2, 5), 9, 0), Example("z", (4,), 9, 0)]
    dataset = SimpleNamespace(train=train, test=test)
    for on, want in ((False, [["B", "A", "C"]] * 3),
                     # x has item 7 (title A): B, C, D; y has B and C: A, D; z has none of them
                     (True, [["B", "C", "D"], ["A", "D"], ["B", "A", "C"]])):
        cfg = load_config(None, ["decode.num_beams=3", f"decode.exclude_history={str(on).lower()}",
                                 "analysis.pruning_users=0"])
        preds, metrics = popularity_predictions(cfg, dataset, encoder, [0, 1, 2])
        assert [p["titles"] for p in preds] == want
        assert [p["rank"] for p in preds] == ([2, None, None] if not on else [1, 1, None])
        assert metrics.get("exclude_history", False) is on
        assert metrics["reference"].get("history_excluded", False) is on  # tells it from one made before
