"""Pruning analysis against brute force on a tiny catalogue."""

import random

import pytest
import torch

from bearrec.analysis import (analyze, overall_rank, plot_pruning, score_all_titles, score_paths, summarize_pruning,
                              titles_above, violates_condition)
from bearrec.config import DecodeConfig, PromptConfig, TinyModelConfig
from bearrec.data.catalogue import Catalogue, Example
from bearrec.data.encode import Encoder
from bearrec.data.prompts import PromptTemplate
from bearrec.evaluation import Recommender
from bearrec.modeling import build_tiny
from bearrec.oracles import exhaustive_scores

TITLES = ["Red Pen", "Red Pen Refill", "Blue Pen", "Stapler", "Stapler Pro", "Paper", "Paper Clips", "Red Pen",
          "Ink", "Ink Black", "Ink Black XL", "Notebook", "Note", "Marker", "Markers", "Tape"]
TINY = TinyModelConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def setup(request):
    catalogue = Catalogue(dict(enumerate(TITLES, start=1)))
    cfg = TinyModelConfig(**{**TINY.__dict__, "architecture": request.param})
    model, tok = build_tiny(cfg, TITLES * 3 + ['History: "a", "b"\nNext:\n'], seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.eval()
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="compact"), "x"), catalogue)
    return model, enc


@torch.no_grad()
def _brute_violation(model, enc, prompt, path, num_beams, constrained):
    """One full forward per step; the B-th largest by sorting, among the trie-valid next tokens (the
    only ones beam search can extend the target's prefix with) under the run's score semantics."""
    for t in range(len(path)):
        logits = model(torch.tensor([prompt + list(path[:t])])).logits[0, -1].float()
        allowed = enc.trie.next_tokens(path[:t])
        norm = torch.logsumexp(logits[allowed] if constrained else logits, 0)
        probs = {tok: float(logits[tok] - norm) for tok in allowed}
        ranked = sorted(probs.values(), reverse=True)
        if len(ranked) >= num_beams and probs[path[t]] < ranked[num_beams - 1] - 1e-6:
            return True
    return False


@pytest.mark.parametrize("constrained", [True, False])
def test_all_title_scores_equal_exhaustive_teacher_forcing(setup, constrained):
    model, enc = setup
    for history in ([1, 2], [5], [9, 10, 3]):
        prompt = enc.prompt_ids(history)
        got = score_all_titles(model, enc.trie, prompt, constrained)
        exact = exhaustive_scores(model, enc.trie, prompt, constrained_softmax=constrained, length_penalty=0.0)
        assert len(got) == len(exact) == 15
        for path, score in exact.items():
            assert got[enc.trie.node_of(path)] == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("constrained", [True, False])
def test_scores_of_given_titles_equal_exhaustive_teacher_forcing(setup, constrained, shared, monkeypatch):
    """Whole paths fed in one forward (shared-prefix cache) or walked level by level (an architecture
    without it): every asked title's log-probability as teacher forcing gives it, duplicates once."""
    import bearrec.feeding as feeding

    model, enc = setup
    if not shared:
        monkeypatch.setattr(feeding.prefix_attention, "supports", lambda m: False)
    rng = random.Random(8)
    paths = sorted(set(enc.trie.item_paths.values()))
    for history in ([1, 2], [5], [9, 10, 3]):
        prompt = enc.prompt_ids(history)
        exact = exhaustive_scores(model, enc.trie, prompt, constrained_softmax=constrained, length_penalty=0.0)
        asked = rng.sample(paths, 6)
        got = score_paths(model, enc.trie, prompt, [*asked, asked[0]], constrained)
        assert {enc.trie.node_of(p) for p in asked} <= set(got)
        for node, score in got.items():  # the walk also returns titles ending on its way: exact too
            assert score == pytest.approx(next(v for p, v in exact.items() if enc.trie.node_of(p) == node), abs=1e-4)
    assert score_paths(model, enc.trie, prompt, [], constrained) == {}


@pytest.mark.parametrize("constrained", [True, False])
def test_titles_above_a_score_come_back_until_cap_of_them_are_found(setup, constrained):
    model, enc = setup
    prompt = enc.prompt_ids([3, 7])
    full = score_all_titles(model, enc.trie, prompt, constrained)
    stopped_early = 0
    for score in sorted(full.values())[1::3]:
        above = {n for n, v in full.items() if v > score}
        everything = titles_above(model, enc.trie, prompt, score, cap=len(full), constrained_softmax=constrained)
        assert above <= set(everything) < set(full)
        assert all(everything[n] == pytest.approx(full[n], abs=1e-5) for n in everything)
        for cap in (1, 2, 4):
            got = titles_above(model, enc.trie, prompt, score, cap, constrained_softmax=constrained)
            assert all(got[n] == pytest.approx(full[n], abs=1e-5) for n in got)
            assert len(above & set(got)) >= min(cap, len(above))
            assert set(got) <= set(everything)
            stopped_early += len(got) < len(everything)
    assert stopped_early > 0  # the walk ended before the floor alone would have ended it


@pytest.mark.parametrize("constrained", [True, False])
def test_capped_rank_equals_the_full_rank_below_the_cap(setup, constrained):
    model, enc = setup
    rng = random.Random(5)
    paths = sorted(set(enc.trie.item_paths.values()))
    seen = set()
    for _ in range(30):
        prompt = enc.prompt_ids([rng.randint(1, 16) for _ in range(rng.randint(1, 4))])
        target = rng.choice(paths)
        full = overall_rank(model, enc.trie, prompt, target, constrained)
        for cap in (1, 3, 16):
            candidates = rng.sample(paths, rng.randint(0, 6))
            assert overall_rank(model, enc.trie, prompt, target, constrained, candidates, cap) == min(full, cap)
        seen.add(full)
    assert min(seen) == 0 and max(seen) > 3


@pytest.mark.parametrize("constrained, num_beams, length_penalty", [(True, 2, 1.0), (True, 3, 1.0), (False, 2, 1.0),
                                                                     (True, 3, 0.0), (False, 2, 0.0)])
def test_pr_at_k_and_violations_match_brute_force(setup, constrained, num_beams, length_penalty):
    model, enc = setup
    rng = random.Random(3)
    examples = [Example(str(i), tuple(rng.randint(1, 16) for _ in range(rng.randint(1, 4))), rng.randint(1, 16), i)
                for i in range(40)]
    decode = DecodeConfig(num_beams=num_beams, constrained_softmax=constrained, batch_size=8,
                          length_penalty=length_penalty)
    rec = Recommender(model, enc, decode)
    result = analyze(rec, examples, list(range(len(examples))), ks=(1, 3, 5), progress=False)
    uncapped = analyze(rec, examples, list(range(len(examples))), ks=(1, 3, 5), progress=False, exact_ranks=True)
    expected_users = []
    for e, ranked in zip(examples, rec.recommend([e.history for e in examples])):
        prompt = enc.prompt_ids(e.history)
        exact = exhaustive_scores(model, enc.trie, prompt, constrained_softmax=constrained, length_penalty=0.0)
        path = tuple(enc.target_ids(e.target))
        rank = sum(s > exact[path] + 1e-6 for s in exact.values())
        pruned = not any(e.target in items for items in ranked.items)
        # checked only where PR@K reads it: pruned, and ranked below the largest K
        violation = _brute_violation(model, enc, prompt, path, num_beams, constrained) if pruned and rank < 5 else None
        expected_users.append({"index": int(e.user_id), "overall_rank": rank, "pruned": pruned, "violation": violation})
    assert uncapped["users"] == [{**u, "raw_beams": False} for u in expected_users] and uncapped["rank_cap"] is None
    assert result["users"] == [{**u, "overall_rank": min(u["overall_rank"], 5), "raw_beams": bool(length_penalty)}
                               for u in expected_users]
    assert result == {**summarize_pruning(expected_users, (1, 3, 5), decode), "users": result["users"], "rank_cap": 5,
                      "raw_beam_users": result["raw_beam_users"]}
    assert any(u["overall_rank"] > 5 for u in expected_users)  # the cap was exercised
    assert any(u["pruned"] for u in expected_users) and any(not u["pruned"] for u in expected_users)
    assert result["PR@5"]["eligible"] > 0
    # undecided by the returned titles (B < max K here: all of them), then the beams without length
    # normalisation; with none (length_penalty 0) the returned titles already are those
    assert result["raw_beam_users"] == (len(examples) if length_penalty else 0) and uncapped["raw_beam_users"] == 0
    assert any(u["pruned"] and u["overall_rank"] >= 5 and u["violation"] is None for u in expected_users)
    assert any(u["violation"] is not None for u in expected_users)


def test_given_recommendations_are_used_instead_of_decoding(setup, monkeypatch):
    """The beams passed in (the run's own test evaluation) give the result a fresh decode gives, and
    nothing is decoded; a count that does not match the users is refused."""
    model, enc = setup
    rng = random.Random(4)
    examples = [Example(str(i), tuple(rng.randint(1, 16) for _ in range(rng.randint(1, 4))), rng.randint(1, 16), i)
                for i in range(12)]
    rec = Recommender(model, enc, DecodeConfig(num_beams=2, batch_size=4))
    indices = [1, 4, 5, 9]
    fresh = analyze(rec, examples, indices, ks=(1, 3), progress=False)
    given = rec.recommend([examples[i].history for i in indices])

    real = Recommender.recommend

    def no_decoding(self, *a, **k):  # the search without length normalisation may still run (undecided users)
        if self.decode.length_penalty == rec.decode.length_penalty:
            raise AssertionError("decoded although the recommendations were given")
        return real(self, *a, **k)

    monkeypatch.setattr(Recommender, "recommend", no_decoding)
    assert analyze(rec, examples, indices, ks=(1, 3), progress=False, recommendations=given) == fresh
    with pytest.raises(ValueError, match="3 recommendations for 4 users"):
        analyze(rec, examples, indices, ks=(1, 3), progress=False, recommendations=given[:3])
    # a stored "other" beam: the target returned at rank 1 is not pruned, whatever the model ranks
    target_title = enc.catalogue.title(examples[1].target)
    hit = [type(given[0])([target_title], [(examples[1].target,)], [0.0]), *given[1:]]
    assert not analyze(rec, examples, indices, ks=(1, 3), progress=False, recommendations=hit)["users"][0]["pruned"]


@pytest.mark.parametrize("constrained", [True, False])
def test_no_violation_where_fewer_than_b_tokens_are_valid(setup, constrained):
    """With B above every node's number of valid children the condition holds at every step, whatever
    the invalid tokens' probabilities (they can never take a beam's place)."""
    model, enc = setup
    prompt = enc.prompt_ids([1, 5])
    for title in set(TITLES):
        path = tuple(enc.target_ids(next(i for i, t in enumerate(TITLES, start=1) if t == title)))
        assert not violates_condition(model, enc.trie, prompt, path, 16)
        assert violates_condition(model, enc.trie, prompt, path, 1) == _brute_violation(model, enc, prompt, path, 1,
                                                                                        constrained)


def test_summary_by_hand():
    users = [{"overall_rank": 0, "pruned": False, "violation": None},
             {"overall_rank": 2, "pruned": True, "violation": True},
             {"overall_rank": 4, "pruned": True, "violation": False},
             {"overall_rank": 9, "pruned": True, "violation": True}]
    got = summarize_pruning(users, (1, 5, 10), DecodeConfig())
    assert got["PR@1"] == {"eligible": 1, "pruned": 0, "rate": 0.0, "violation_share": None}
    assert got["PR@5"] == {"eligible": 3, "pruned": 2, "rate": 2 / 3, "violation_share": 0.5}
    assert got["PR@10"] == {"eligible": 4, "pruned": 3, "rate": 0.75, "violation_share": 2 / 3}


def test_plot_writes_a_png(tmp_path):
    users = [{"overall_rank": 0, "pruned": True, "violation": True}]
    r = summarize_pruning(users, (5, 10), DecodeConfig())
    plot_pruning({"msl": r, "bear": r}, tmp_path / "pruning.png")
    assert (tmp_path / "pruning.png").read_bytes()[:4] == b"\x89PNG"


def test_stored_recommendations_read_back_an_evaluation_only_when_it_decoded_alike(setup, tmp_path):
    from bearrec.evaluation import evaluate, stored_recommendations, write_outputs

    model, enc = setup
    rng = random.Random(6)
    examples = [Example(str(i), tuple(rng.randint(1, 16) for _ in range(rng.randint(1, 4))), rng.randint(1, 16), i)
                for i in range(8)]
    decode = DecodeConfig(num_beams=3, batch_size=4)
    rec = Recommender(model, enc, decode)
    preds, metrics = evaluate(rec, examples, [0, 2, 5, 7], progress=False)
    folder = tmp_path / "eval-test"
    write_outputs(folder, preds, metrics)
    got = stored_recommendations(folder, [7, 2], decode)
    by_index = {p["index"]: p for p in preds}
    assert [(r.titles, r.items, r.scores) for r in got] == [
        (by_index[i]["titles"], [tuple(x) for x in by_index[i]["items"]], by_index[i]["scores"]) for i in (7, 2)]
    fresh = rec.recommend([examples[7].history, examples[2].history])  # other batches: scores equal to rounding
    assert [(r.titles, r.items) for r in got] == [(r.titles, r.items) for r in fresh]
    assert [r.scores for r in got] == [pytest.approx(r.scores, abs=1e-5) for r in fresh]
    assert stored_recommendations(folder, [], decode) == []
    assert stored_recommendations(folder, [2, 3], decode) is None  # user 3 was not evaluated
    for other in (DecodeConfig(num_beams=2, batch_size=4), DecodeConfig(num_beams=3, constrained_softmax=False),
                  DecodeConfig(num_beams=3, length_penalty=0.5), DecodeConfig(num_beams=3, ghost_threshold=0.5),
                  DecodeConfig(num_beams=3, igd_alpha=0.1)):
        assert stored_recommendations(folder, [2], other) is None
    assert stored_recommendations(tmp_path / "absent", [2], decode) is None
    (folder / "predictions.jsonl").write_text('{"index": 2, "titles": ["Ink"]}\n')  # no items: not usable
    assert stored_recommendations(folder, [2], decode) is None
    (folder / "predictions.jsonl").write_text("not json\n")
    assert stored_recommendations(folder, [2], decode) is None


def test_known_scores_end_the_search_only_when_they_clearly_beat_the_target(setup):
    """Titles scored elsewhere (the decoder's sums) count as beating the target only by more than
    KNOWN_MARGIN; without enough of them and without the walk the rank stays undecided (None)."""
    from bearrec.analysis import KNOWN_MARGIN

    model, enc = setup
    prompt = enc.prompt_ids([2, 6])
    full = score_all_titles(model, enc.trie, prompt, True)
    paths = {enc.trie.node_of(p): p for p in set(enc.trie.item_paths.values())}
    ranked = sorted(full, key=full.get, reverse=True)
    target = ranked[5]  # five titles above it
    above = {n: full[n] for n in ranked[:5]}
    rank = overall_rank(model, enc.trie, prompt, paths[target], True, cap=3, walk=False, known=above)
    assert rank == 3
    close = {n: full[target] + KNOWN_MARGIN / 2 for n in ranked[:5]}  # within rounding of the target: not evidence
    assert overall_rank(model, enc.trie, prompt, paths[target], True, cap=3, walk=False, known=close) is None
    assert overall_rank(model, enc.trie, prompt, paths[target], True, cap=3, known=close) == 3  # the walk decides
    assert overall_rank(model, enc.trie, prompt, paths[target], True, cap=8, known=above) == 5  # exact below the cap


def test_an_analysis_resumes_from_the_records_it_wrote(setup, tmp_path, monkeypatch):
    """Records go out one by one as users finish; given back as `done` (through a file with a line a
    killed process cut off), those users are neither decoded nor ranked again, and the result is
    that of one uninterrupted analysis."""
    import json

    from bearrec.analysis import PRUNING_KEYS
    from bearrec.evaluation import read_records

    model, enc = setup
    rng = random.Random(9)
    examples = [Example(str(i), tuple(rng.randint(1, 16) for _ in range(rng.randint(1, 4))), rng.randint(1, 16), i)
                for i in range(10)]
    rec = Recommender(model, enc, DecodeConfig(num_beams=3, batch_size=4))
    indices = [0, 2, 3, 5, 8, 9]
    written = []
    whole = analyze(rec, examples, indices, ks=(1, 3), progress=False, record=written.append)
    assert sorted(u["index"] for u in written) == indices and sorted(written, key=lambda u: u["index"]) == whole["users"]
    path = tmp_path / "partial.jsonl"
    path.write_text("".join(json.dumps(u) + "\n" for u in written[:3]) + '{"index": 9, "overall_r')
    done = read_records(path, PRUNING_KEYS)
    assert set(done) == {u["index"] for u in written[:3]}
    assert read_records(tmp_path / "absent", PRUNING_KEYS) == {}
    decoded, again = [], []
    real = Recommender.recommend
    monkeypatch.setattr(Recommender, "recommend", lambda self, histories, **k: decoded.append(len(histories))
                        or real(self, histories, **k))
    resumed = analyze(rec, examples, indices, ks=(1, 3), progress=False, done=done, record=again.append)
    assert resumed == whole and decoded[0] == 3  # only the three users not read back were decoded
    assert sorted(u["index"] for u in again) == sorted(set(indices) - set(done))


def test_an_evaluation_cut_off_resumes_from_its_partial_file(setup, tmp_path, monkeypatch):
    """Each decoded batch's records are appended; a rerun decodes only the users missing and returns
    what one uninterrupted evaluation returns (scores to rounding: the rest are batched anew); a file
    written for another decoding or model starts over."""
    from bearrec.evaluation import evaluate

    model, enc = setup
    rng = random.Random(10)
    examples = [Example(str(i), tuple(rng.randint(1, 16) for _ in range(rng.randint(1, 4))), rng.randint(1, 16), i)
                for i in range(9)]
    rec = Recommender(model, enc, DecodeConfig(num_beams=3, batch_size=3))
    whole, metrics = evaluate(rec, examples, progress=False)
    partial = tmp_path / "eval-test.partial.jsonl"
    real, decoded = Recommender.recommend, []

    def killed_after_one_batch(self, histories, progress=False, on_batch=None):
        decoded.append(len(histories))

        def then_killed(positions, recs):
            on_batch(positions, recs)
            raise KeyboardInterrupt("killed")
        return real(self, histories, progress, on_batch=then_killed if len(decoded) == 1 else on_batch)

    monkeypatch.setattr(Recommender, "recommend", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(rec, examples, progress=False, partial=partial, model="run")
    assert len(partial.read_text().splitlines()) == 1 + 3  # the first line, then one batch of 3 users
    with partial.open("a") as f:
        f.write('{"index": 8, "ra')  # a record cut off mid-line: that user is decoded again
    again, metrics_again = evaluate(rec, examples, progress=False, partial=partial, model="run")
    assert decoded == [9, 6]
    strip = lambda preds: [{k: v for k, v in p.items() if k != "scores"} for p in preds]  # noqa: E731
    assert strip(again) == strip(whole) and metrics_again == metrics
    assert [p["scores"] for p in again] == [pytest.approx(p["scores"], abs=1e-5) for p in whole]
    evaluate(rec, examples, progress=False, partial=partial, model="another run")  # another first line
    assert decoded == [9, 6, 9]
