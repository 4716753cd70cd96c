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


def _random_examples(rng: random.Random, n: int) -> list[Example]:
    """`n` rows of 1-4 history items and a target, all among the 16 catalogue items."""
    return [Example(str(i), tuple(rng.randint(1, 16) for _ in range(rng.randint(1, 4))), rng.randint(1, 16), i)
            for i in range(n)]


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


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("constrained", [True, False])
def test_scores_of_several_prompts_at_once_equal_each_prompt_alone(setup, constrained, shared, monkeypatch):
    """`score_batch`: one prefill of several prompts (different lengths, a prompt with no paths, a path
    asked twice) and one forward give each prompt what teacher forcing gives it."""
    import bearrec.feeding as feeding
    from bearrec.analysis import score_batch

    model, enc = setup
    if not shared:
        monkeypatch.setattr(feeding.prefix_attention, "supports", lambda m: False)
    rng = random.Random(11)
    paths = sorted(set(enc.trie.item_paths.values()))
    prompts = [enc.prompt_ids(h) for h in ([1, 2], [5], [9, 10, 3], [4])]
    asked = [rng.sample(paths, 3), [], [paths[0], paths[0]], rng.sample(paths, 5)]
    got = score_batch(model, enc.trie, prompts, asked, constrained)
    assert len(got) == 4 and got[1] == {}
    for prompt, per, scores in zip(prompts, asked, got):
        exact = exhaustive_scores(model, enc.trie, prompt, constrained_softmax=constrained, length_penalty=0.0)
        assert {enc.trie.node_of(p) for p in per} <= set(scores)
        for path in per:
            assert scores[enc.trie.node_of(path)] == pytest.approx(exact[path], abs=1e-4)
    assert score_batch(model, enc.trie, [], [], constrained) == []
    with pytest.raises(ValueError, match="1 lists of paths for 2 prompts"):
        score_batch(model, enc.trie, prompts[:2], asked[:1], constrained)


def test_feeding_sequences_names_a_missing_prompt(setup):
    from bearrec.decoding import Prefilled

    model, enc = setup
    run = Prefilled(model, [enc.prompt_ids([1]), enc.prompt_ids([2, 3])], True, pad_token_id=0, shared_prefix=True)
    with pytest.raises(ValueError, match="prompt of every sequence"):
        run.feed_sequences([[5, 6]])  # two prompts: whose?
    with pytest.raises(ValueError, match="outside 0..1"):
        run.feed_sequences([[5, 6]], [2])


@pytest.mark.parametrize("constrained", [True, False])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_a_returned_score_times_the_length_power_is_the_titles_log_prob(setup, constrained, length_penalty):
    """What the pruning analysis reads off the decoder's scores instead of scoring the returned titles
    again: score * len(path) ** length_penalty equals the teacher-forced log-probability."""
    from bearrec.analysis import _returned_log_probs

    model, enc = setup
    rec = Recommender(model, enc, DecodeConfig(num_beams=4, constrained_softmax=constrained, batch_size=3,
                                               length_penalty=length_penalty))
    histories = [(1, 2), (5,), (9, 10, 3), (4, 4)]
    for history, ranked in zip(histories, rec.recommend(histories)):
        exact = exhaustive_scores(model, enc.trie, enc.prompt_ids(history), constrained_softmax=constrained,
                                  length_penalty=0.0)
        paths = [enc.trie.item_paths[items[0]] for items in ranked.items]
        got = _returned_log_probs(ranked, enc.trie, length_penalty)
        assert len(got) == len(paths) == 4
        assert all(got[enc.trie.node_of(p)] == pytest.approx(exact[p], abs=1e-5) for p in paths)


@pytest.mark.parametrize("autocast", ["none", "bfloat16", "bf16 weights"])
def test_what_is_scored_again_per_stage(setup, autocast, monkeypatch):
    """In fp32 the returned titles' log-probs come from the decoder's scores: first each user's target
    is the one path scored, all users of a decode batch in one call; the users the returned titles
    leave undecided (fewer than max K of them beat the target) then get the shortest titles scored
    with the target. Under bf16 autocast, or with the weights stored in bf16 (evidence needs a wide
    margin there), the returned titles are scored with the target in both stages, as exactly as before."""
    import copy

    import bearrec.analysis as analysis

    model, enc = setup
    if autocast == "bf16 weights":
        model, autocast = copy.deepcopy(model).to(torch.bfloat16), "none"
    rng = random.Random(12)
    examples = _random_examples(rng, 7)
    rec = Recommender(model, enc, DecodeConfig(num_beams=3, batch_size=8, length_penalty=0.0, autocast=autocast))
    calls = []
    real = analysis.score_batch
    monkeypatch.setattr(analysis, "score_batch", lambda m, t, prompts, paths, c: calls.append(paths) or
                        real(m, t, prompts, paths, c))
    monkeypatch.setattr(analysis, "SHORT_TITLES", 2)
    margins = []
    record = analysis._pruning_record
    monkeypatch.setattr(analysis, "_pruning_record", lambda *a, **kw: margins.append(kw.get("margin")) or
                        record(*a, **kw))
    short = sorted(set(enc.trie.item_paths.values()), key=lambda p: (len(p), p))[:2]
    result = analyze(rec, examples, list(range(7)), ks=(1, 3), progress=False)
    fp32 = autocast == "none" and next(model.parameters()).dtype == torch.float32
    # evidence from other computations must beat the target by the margin of their rounding
    assert margins and set(margins) <= {analysis.KNOWN_MARGIN if fp32 else analysis.FLOOR_SLACK, None}
    targets = [tuple(enc.target_ids(e.target)) for e in examples]
    if fp32:
        undecided = []
        for e, target, ranked in zip(examples, targets, rec.recommend([e.history for e in examples])):
            exact = exhaustive_scores(model, enc.trie, enc.prompt_ids(e.history), constrained_softmax=True,
                                      length_penalty=0.0)
            beaten = [p for p in (enc.trie.item_paths[items[0]] for items in ranked.items)
                      if p != target and exact[p] > exact[target] + 1e-4]
            if len(beaten) < 3:
                undecided.append(target)
        assert calls[0] == [[t] for t in targets]
        assert 0 < len(undecided) < 7
        assert calls[1:] == [[[t, *short] for t in undecided[i:i + 2]]  # 8 // (1 + 2): two users a call
                             for i in range(0, len(undecided), 2)]
    else:  # 8 // (1 + 3 beams): two users a call, each target then its three returned titles; then one a call
        first = [c for c in calls if all(len(per) == 4 for per in c)]
        assert [len(c) for c in first] == [2, 2, 2, 1] and [per[0] for c in first for per in c] == targets
        assert len(calls) > 4 and all(len(c) == 1 and len(c[0]) == 6 and c[0][4:] == short for c in calls[4:])
    assert [u["index"] for u in result["users"]] == list(range(7))


@pytest.mark.parametrize("constrained", [True, False])
def test_titles_above_a_score_come_back_until_cap_of_them_are_found(setup, constrained):
    model, enc = setup
    prompt = enc.prompt_ids([3, 7])
    full = score_all_titles(model, enc.trie, prompt, constrained)
    depth = {enc.trie.node_of(p): len(p) for p in enc.trie.item_paths.values()}
    stopped_early = shortened = 0
    scores = sorted(full.values())
    # thresholds halfway between two titles' scores that differ by more than the 1e-5 the two scorings may
    # differ by: a threshold within that of a title's score is a float tie, either side of which is right
    halfway = [(low + high) / 2 for low, high in zip(scores, scores[1:]) if high - low > 2e-5]
    for score in halfway[1::3]:
        above = {n for n, v in full.items() if v > score}
        everything = titles_above(model, enc.trie, prompt, score, cap=len(full), constrained_softmax=constrained)
        assert above <= set(everything) < set(full)
        assert all(everything[n] == pytest.approx(full[n], abs=1e-5) for n in everything)
        for cap in (1, 2, 4, 6):
            got = titles_above(model, enc.trie, prompt, score, cap, constrained_softmax=constrained)
            assert all(got[n] == pytest.approx(full[n], abs=1e-5) for n in got)
            assert len(above & set(got)) >= min(cap, len(above))
            assert set(got) <= set(everything)
            stopped_early += len(got) < len(everything)
            # titles shown to beat the score elsewhere (a search's evidence) count towards the cap
            shown = frozenset(sorted(above, key=depth.get, reverse=True)[:cap - 1])  # those the walk meets last
            with_shown = titles_above(model, enc.trie, prompt, score, cap, constrained, shown=shown)
            assert all(with_shown[n] == pytest.approx(full[n], abs=1e-5) for n in with_shown)
            assert len({n for n in with_shown if full[n] > score} | shown) >= min(cap, len(above))
            assert set(with_shown) <= set(got)
            shortened += len(with_shown) < len(got)
    assert stopped_early > 0  # the walk ended before the floor alone would have ended it
    assert shortened > 0  # and the titles shown ended it sooner


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
@pytest.mark.parametrize("short_titles", [0, 64])
def test_pr_at_k_and_violations_match_brute_force(setup, constrained, num_beams, length_penalty, short_titles,
                                                  monkeypatch):
    """Every stage (the returned titles, the shortest titles: 64 here is every title, the search
    without normalisation, the walk) against exhaustive teacher forcing."""
    import bearrec.analysis as analysis

    monkeypatch.setattr(analysis, "SHORT_TITLES", short_titles)
    model, enc = setup
    rng = random.Random(3)
    examples = _random_examples(rng, 40)
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
    # undecided by the returned titles (B < max K here: all of them), then (short_titles 0) the beams
    # without length normalisation; with every title scored, only users ranked below max K go on
    raw_users = [bool(length_penalty) and (short_titles == 0 or u["overall_rank"] < 5) for u in expected_users]
    assert result["users"] == [{**u, "overall_rank": min(u["overall_rank"], 5), "raw_beams": raw}
                               for u, raw in zip(expected_users, raw_users)]
    assert result == {**summarize_pruning(expected_users, (1, 3, 5), decode), "users": result["users"], "rank_cap": 5,
                      "raw_beam_users": result["raw_beam_users"]}
    assert any(u["overall_rank"] > 5 for u in expected_users)  # the cap was exercised
    assert any(u["pruned"] for u in expected_users) and any(not u["pruned"] for u in expected_users)
    assert result["PR@5"]["eligible"] > 0
    assert result["raw_beam_users"] == sum(raw_users) and (sum(raw_users) > 0 or not length_penalty)
    assert uncapped["raw_beam_users"] == 0
    assert any(u["pruned"] and u["overall_rank"] >= 5 and u["violation"] is None for u in expected_users)
    assert any(u["violation"] is not None for u in expected_users)


@pytest.mark.parametrize("constrained, settings", [
    (True, {}), (False, {}), (False, {"length_penalty": 0.0}), (True, {"length_penalty": 2.0}),
    (False, {"length_penalty": -1.0}), (True, {"ghost_threshold": 0.5}), (False, {"igd_alpha": 0.3}),
    (True, {"autocast": "bfloat16"})])
def test_with_at_least_max_k_beams_every_user_agrees_with_brute_force(setup, constrained, settings):
    """B = max K, as in a real run (B 10, K 5 and 10), where the returned titles' scores decide most
    users: every capped rank and pruned flag against exhaustive teacher forcing. A title within 1e-4
    of the target may count either way (the search and teacher forcing round apart)."""
    model, enc = setup
    rng = random.Random(7)
    examples = _random_examples(rng, 24)
    decode = DecodeConfig(num_beams=5, constrained_softmax=constrained, batch_size=8, **settings)
    rec = Recommender(model, enc, decode, train_targets=[rng.randint(1, 16) for _ in range(60)])
    users = analyze(rec, examples, list(range(len(examples))), ks=(1, 3, 5), progress=False)["users"]
    for e, ranked, user in zip(examples, rec.recommend([e.history for e in examples]), users):
        exact = exhaustive_scores(model, enc.trie, enc.prompt_ids(e.history), constrained_softmax=constrained,
                                  length_penalty=0.0)
        target = exact[tuple(enc.target_ids(e.target))]
        surely, maybe = (sum(v > target + d for v in exact.values()) for d in (1e-4, -1e-4))
        assert min(surely, 5) <= user["overall_rank"] <= min(maybe - 1, 5), (e, user, surely, maybe)
        assert user["pruned"] == (not any(e.target in items for items in ranked.items))
    ranks = [u["overall_rank"] for u in users]
    assert min(ranks) < 5 and max(ranks) == 5  # users ranked inside and beyond the cap


def test_given_recommendations_are_used_instead_of_decoding(setup, monkeypatch):
    """The beams passed in (the run's own test evaluation) give the result a fresh decode gives, and
    nothing is decoded; a count that does not match the users is refused."""
    model, enc = setup
    rng = random.Random(4)
    examples = _random_examples(rng, 12)
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


def test_no_violation_where_fewer_than_b_tokens_are_valid(setup):
    """With B above every node's number of valid children the condition holds at every step, whatever
    the invalid tokens' probabilities (they can never take a beam's place). With B = 1 it breaks for
    some titles and not others, as brute force under either softmax says (one normaliser divides the
    valid tokens under both, so their order is the same)."""
    model, enc = setup
    prompt = enc.prompt_ids([1, 5])
    seen = []
    for title in sorted(set(TITLES)):
        path = tuple(enc.target_ids(next(i for i, t in enumerate(TITLES, start=1) if t == title)))
        assert not violates_condition(model, enc.trie, prompt, path, 16)
        seen.append(violates_condition(model, enc.trie, prompt, path, 1))
        assert seen[-1] == _brute_violation(model, enc, prompt, path, 1, True) == \
            _brute_violation(model, enc, prompt, path, 1, False)
    assert any(seen) and not all(seen)


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
    examples = _random_examples(rng, 8)
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
                  DecodeConfig(num_beams=3, igd_alpha=0.1), DecodeConfig(num_beams=3, exclude_history=True)):
        assert stored_recommendations(folder, [2], other) is None
    excluding = DecodeConfig(num_beams=3, batch_size=4, exclude_history=True)
    write_outputs(tmp_path / "nohistory", *evaluate(Recommender(model, enc, excluding), examples, [2], progress=False))
    assert stored_recommendations(tmp_path / "nohistory", [2], excluding) is not None
    assert stored_recommendations(tmp_path / "nohistory", [2], decode) is None
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
    examples = _random_examples(rng, 10)
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


def _killed_after_the_first_batch(monkeypatch, with_softmaxes: bool = False) -> list:
    """Recommender.recommend_each, killed right after the first call's first batch is handed on;
    returns the list each call appends its user count to (with the softmaxes asked)."""
    real, decoded = Recommender.recommend_each, []

    def killed(self, histories, softmaxes, progress=False, on_batch=None):
        decoded.append((len(histories), softmaxes) if with_softmaxes else len(histories))

        def then_killed(positions, recs):
            on_batch(positions, recs)
            raise KeyboardInterrupt("killed")
        return real(self, histories, softmaxes, progress, on_batch=then_killed if len(decoded) == 1 else on_batch)

    monkeypatch.setattr(Recommender, "recommend_each", killed)
    return decoded


def test_an_evaluation_cut_off_resumes_from_its_partial_file(setup, tmp_path, monkeypatch):
    """Each decoded batch's records are appended; a rerun decodes only the users missing and returns
    what one uninterrupted evaluation returns (scores to rounding: the rest are batched anew); a file
    written for another decoding or model starts over."""
    from bearrec.evaluation import evaluate

    model, enc = setup
    rng = random.Random(10)
    examples = _random_examples(rng, 9)
    rec = Recommender(model, enc, DecodeConfig(num_beams=3, batch_size=3))
    whole, metrics = evaluate(rec, examples, progress=False)
    partial = tmp_path / "eval-test.partial.jsonl"
    decoded = _killed_after_the_first_batch(monkeypatch)
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
    excluding = Recommender(model, enc, DecodeConfig(num_beams=3, batch_size=3, exclude_history=True))
    evaluate(excluding, examples, progress=False, partial=partial, model="another run")  # another decoding
    assert decoded == [9, 6, 9, 9]


def test_both_softmaxes_from_one_pass_equal_two_evaluations_and_resume(setup, tmp_path, monkeypatch):
    """`evaluate_each`: the (predictions, metrics) of each softmax are those of a plain `evaluate` with
    that softmax; its two partial files resume like one (a user is decoded again unless both hold it)."""
    import dataclasses

    from bearrec.evaluation import evaluate, evaluate_each

    model, enc = setup
    rng = random.Random(11)
    examples = _random_examples(rng, 9)
    decode = DecodeConfig(num_beams=3, batch_size=3)
    rec = Recommender(model, enc, decode)
    valid, vocab = evaluate_each(rec, examples, None, (True, False), progress=False)
    assert valid == evaluate(rec, examples, progress=False)
    assert vocab == evaluate(Recommender(model, enc, dataclasses.replace(decode, constrained_softmax=False)),
                             examples, progress=False)
    assert vocab[1]["constrained_softmax"] is False and valid[0] != vocab[0]
    partials = [tmp_path / "eval-test.partial.jsonl", tmp_path / "eval-test-vocab-softmax.partial.jsonl"]
    with pytest.raises(ValueError, match="1 partial files for 2 softmaxes"):
        evaluate_each(rec, examples, None, (True, False), partials=partials[:1])
    decoded = _killed_after_the_first_batch(monkeypatch, with_softmaxes=True)
    with pytest.raises(KeyboardInterrupt):
        evaluate_each(rec, examples, None, (True, False), progress=False, partials=partials, model="run")
    assert [len(p.read_text().splitlines()) for p in partials] == [4, 4]
    lines = partials[1].read_text().splitlines()
    partials[1].write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # one user's record cut off, in one file
    again = evaluate_each(rec, examples, None, (True, False), progress=False, partials=partials, model="run")
    assert decoded == [(9, (True, False)), (7, (True, False))]  # the 6 not decoded, and that user again
    strip = lambda preds: [{k: v for k, v in p.items() if k != "scores"} for p in preds]  # noqa: E731
    for (preds, metrics), (whole, whole_metrics) in zip(again, [valid, vocab]):
        assert strip(preds) == strip(whole) and metrics == whole_metrics
        assert [p["scores"] for p in preds] == [pytest.approx(p["scores"], abs=1e-5) for p in whole]
    # the first softmax's file is the one a plain evaluate of the same model resumes from
    assert partials[0].read_text().splitlines()[0] == (
        __import__("json").dumps({"partial_of": "run", "num_beams": 3, "constrained_softmax": True,
                                  "length_penalty": 1.0, "ghost_threshold": None, "igd_alpha": None, "preset": "hf",
                                  "users": 9, "first": [0], "last": [8]}))
