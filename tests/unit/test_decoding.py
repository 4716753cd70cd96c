"""The decoder against two independent oracles: Hugging Face generate with a trie
prefix_allowed_tokens_fn, and exhaustive teacher-forced scoring of every title."""

import copy
import math
import random

import pytest
import torch

from bearrec.config import PromptConfig, TinyModelConfig
from bearrec.data.catalogue import Catalogue
from bearrec.data.encode import Encoder
from bearrec.data.prompts import PromptTemplate
from bearrec.decoding import Ranked, beam_search
from bearrec.modeling import ModelError, build_tiny, build_tiny_model
from bearrec.oracles import exhaustive_scores, hf_beam_search, same_ranking
from bearrec.trie import TitleTrie

# duplicates (items 1 and 8) and titles that extend others ("Ink", "Ink Black", "Ink Black XL")
TITLES = ["Red Pen", "Red Pen Refill", "Blue Pen", "Stapler", "Stapler Pro", "Paper", "Paper Clips", "Red Pen",
          "Ink", "Ink Black", "Ink Black XL", "Notebook", "Note", "Marker", "Markers", "Tape"]
TINY = TinyModelConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def setup():
    catalogue = Catalogue(dict(enumerate(TITLES, start=1)))
    model, tok = build_tiny(TINY, TITLES * 3 + ['History: "a", "b"\nNext:\n'], seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaky distributions: beam search then prunes for real
    model.eval()
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="compact"), "x"), catalogue)
    rng = random.Random(0)
    prompts = [enc.prompt_ids([rng.randint(1, 16) for _ in range(rng.randint(1, 5))]) for _ in range(100)]
    return model, tok, enc, prompts


def _assert_all_same(ours, ref):
    assert len(ours) == len(ref)
    bad = [i for i, (a, b) in enumerate(zip(ours, ref)) if not same_ranking(a, b)]
    assert not bad, (bad[:3], ours[bad[0]], ref[bad[0]]) if bad else None


@pytest.mark.parametrize("num_beams", [1, 2, 5, 10])
def test_matches_hf_generate_on_100_prompts(setup, num_beams):
    model, tok, enc, prompts = setup
    ours = beam_search(model, enc.trie, prompts, num_beams, pad_token_id=tok.pad_token_id)
    ref = hf_beam_search(model, enc.trie, prompts, num_beams, pad_token_id=tok.pad_token_id)
    _assert_all_same(ours, ref)
    assert all(len(r.paths) == num_beams for r in ours)


@pytest.mark.parametrize("constrained, length_penalty, num_beams", [
    (False, 1.0, 5), (False, 0.0, 10), (True, 0.0, 5), (True, 2.0, 2), (False, 1.0, 1)])
def test_matches_hf_generate_for_other_settings(setup, constrained, length_penalty, num_beams):
    model, tok, enc, prompts = setup
    kw = dict(constrained_softmax=constrained, length_penalty=length_penalty, pad_token_id=tok.pad_token_id)
    _assert_all_same(beam_search(model, enc.trie, prompts[:30], num_beams, **kw),
                     hf_beam_search(model, enc.trie, prompts[:30], num_beams, **kw))


def test_results_are_distinct_catalogue_titles_mapped_to_items(setup):
    model, tok, enc, prompts = setup
    for ranked in beam_search(model, enc.trie, prompts[:20], 10, pad_token_id=tok.pad_token_id):
        assert len(set(ranked.paths)) == len(ranked.paths) == 10
        assert ranked.scores == sorted(ranked.scores, reverse=True)
        for path, node in zip(ranked.paths, ranked.nodes):
            assert enc.trie.contains(path) and enc.trie.node_of(path) == node
        items = [enc.trie.items_at(n) for n in ranked.nodes]
        assert all(items) and sum(len(i) for i in items) >= 10
    red_pen = enc.trie.node_of(enc.target_ids(1))
    assert enc.trie.items_at(red_pen) == (1, 8)


@pytest.mark.parametrize("constrained", [True, False])
def test_wide_beam_equals_exhaustive_scoring(setup, constrained):
    model, tok, enc, prompts = setup
    num_titles = len(enc.trie)  # 15 distinct titles
    for prompt in prompts[:6]:
        (ranked,) = beam_search(model, enc.trie, [prompt], num_titles + 3, constrained_softmax=constrained,
                                pad_token_id=tok.pad_token_id)
        exact = exhaustive_scores(model, enc.trie, prompt, constrained_softmax=constrained)
        order = sorted(exact, key=lambda p: -exact[p])
        assert same_ranking(ranked, Ranked(order, [exact[p] for p in order], []))
        assert len(ranked.paths) == num_titles  # every title, none twice, no placeholders


@pytest.mark.parametrize("threshold, length_penalty", [(1.0, 1.0), (0.6, 2.0)])
def test_ghost_tokens_left_out_of_the_length_equals_exhaustive_scoring(setup, threshold, length_penalty):
    """D3's ghost tokens: with a threshold, tokens of probability >= it do not count in the length.
    Under the constrained softmax a trie node with one child gives probability exactly 1."""
    model, tok, enc, prompts = setup
    num_titles = len(enc.trie)
    changed = 0
    for prompt in prompts[:6]:
        (ranked,) = beam_search(model, enc.trie, [prompt], num_titles + 3, length_penalty=length_penalty,
                                ghost_threshold=threshold, pad_token_id=tok.pad_token_id)
        exact = exhaustive_scores(model, enc.trie, prompt, length_penalty=length_penalty, ghost_threshold=threshold)
        order = sorted(exact, key=lambda p: -exact[p])
        assert same_ranking(ranked, Ranked(order, [exact[p] for p in order], []))
        plain = exhaustive_scores(model, enc.trie, prompt, length_penalty=length_penalty)
        changed += sum(abs(plain[p] - exact[p]) > 1e-6 for p in exact)
    assert changed > 0  # some titles do hold ghost tokens, so the setting is exercised
    with pytest.raises(ValueError, match="ghost_threshold"):
        beam_search(model, enc.trie, prompts[:1], 2, ghost_threshold=0.0)


def test_batching_does_not_change_results(setup):
    model, tok, enc, prompts = setup
    together = beam_search(model, enc.trie, prompts[:12], 5, pad_token_id=tok.pad_token_id)
    alone = [beam_search(model, enc.trie, [p], 5, pad_token_id=tok.pad_token_id)[0] for p in prompts[:12]]
    assert all(same_ranking(a, b, 1e-5) for a, b in zip(together, alone))


def test_token_level_prefix_paths_and_qwen_sized_vocab():
    """Synthetic trie whose paths are token-prefixes of one another, with a 151,936-token vocabulary."""
    eos = 0
    rng = random.Random(1)
    paths = {(5, 6), (5, 6, 7), (5, 6, 7, 8), (9,), (9, 10), (11, 12, 13)}
    while len(paths) < 40:
        paths.add(tuple(rng.randint(1, 151_000) for _ in range(rng.randint(1, 4))))
    paths = sorted(paths)
    trie = TitleTrie([[*p, eos] for p in paths], [[i] for i in range(len(paths))], eos)
    model = build_tiny_model(TINY, vocab_size=151_936, eos_token_id=eos, seed=2).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    prompts = [[rng.randint(1, 151_000) for _ in range(rng.randint(2, 6))] for _ in range(15)]
    for constrained in (True, False):
        kw = dict(constrained_softmax=constrained, pad_token_id=1)
        _assert_all_same(beam_search(model, trie, prompts, 5, **kw), hf_beam_search(model, trie, prompts, 5, **kw))
    (ranked,) = beam_search(model, trie, prompts[:1], 50, pad_token_id=1)
    exact = exhaustive_scores(model, trie, prompts[0])
    assert sorted(ranked.paths) == sorted(exact) and len(ranked.paths) == 40


def test_bad_arguments(setup):
    model, tok, enc, prompts = setup
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        beam_search(model, enc.trie, prompts[:1], 0)
    with pytest.raises(ValueError, match="at least one token"):
        beam_search(model, enc.trie, [prompts[0], []], 2)


def test_nan_weights_are_a_clear_error_not_empty_lists(setup):
    model, tok, enc, prompts = setup
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.lm_head.weight[:] = float("nan")
    with pytest.raises(ModelError, match="log-probabilities are NaN"):
        beam_search(broken, enc.trie, prompts[:2], 3)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_shared_prefix_attention_equals_the_plain_cache(setup, arch):
    """The shared-prefix path (prompt KV once per user) against Hugging Face's cache."""
    model_, tok, enc, prompts = setup
    cfg = TinyModelConfig(**{**TINY.__dict__, "architecture": arch, "num_heads": 4, "hidden_size": 32})
    model = build_tiny_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id, seed=5).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    kw = dict(pad_token_id=tok.pad_token_id)
    shared = beam_search(model, enc.trie, prompts[:16], 5, shared_prefix=True, **kw)
    plain = beam_search(model, enc.trie, prompts[:16], 5, shared_prefix=False, **kw)
    assert all(same_ranking(a, b, 1e-5) for a, b in zip(shared, plain))
    _assert_all_same(shared, hf_beam_search(model, enc.trie, prompts[:16], 5, **kw))
    assert model.config._attn_implementation != "bearrec_shared_prefix"  # restored after decoding


def test_shared_prefix_with_grouped_query_attention(setup):
    model_, tok, enc, prompts = setup
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    kw = dict(pad_token_id=tok.pad_token_id)
    _assert_all_same(beam_search(model, enc.trie, prompts[:16], 4, shared_prefix=True, **kw),
                     hf_beam_search(model, enc.trie, prompts[:16], 4, **kw))


def _slow_thresholds(model, trie, prompt, B, constrained=True):
    """Independent slow beam search (one forward per beam per step, HF rules with length penalty 1):
    the B-th candidate score of every step until the search stops."""
    paths = sorted(set(trie.item_paths.values()))
    eos = trie.eos_token_id
    beams, finished, out, step = [((), 0.0)], [], [], 0
    while beams:
        cands = []
        for prefix, score in beams:
            nxt = sorted({p[len(prefix)] for p in paths if p[:len(prefix)] == prefix and len(p) > len(prefix)})
            row = model(torch.tensor([prompt + list(prefix)])).logits[0, -1].float()
            lp = row[nxt] - torch.logsumexp(row[nxt], 0) if constrained else row.log_softmax(-1)[nxt]
            cands += [(score + float(v), prefix + (t,)) for t, v in zip(nxt, lp)]
        cands.sort(key=lambda c: -c[0])
        top = cands[:2 * B]
        out.append(top[B - 1][0] if len(top) >= B else float("-inf"))
        step += 1
        for rank, (score, path) in enumerate(top):
            if path[-1] == eos and rank < B:
                finished = sorted(finished + [score / step], reverse=True)[:B]
        beams = [(path, score) for score, path in top if path[-1] != eos][:B]
        best = max((s for _, s in beams), default=float("-inf")) / step
        if not beams or (len(finished) == B and best <= finished[-1]):
            break
    return out


@pytest.mark.parametrize("num_beams", [2, 4])
def test_prefix_thresholds_match_a_slow_beam_search(setup, num_beams):
    from bearrec.decoding import prefix_thresholds

    model, tok, enc, prompts = setup
    fast = prefix_thresholds(model, enc.trie, prompts[:8], num_beams, pad_token_id=tok.pad_token_id)
    for prompt, got in zip(prompts[:8], fast):
        with torch.no_grad():
            want = _slow_thresholds(model, enc.trie, prompt, num_beams)
        assert len(got) == len(want) and got == pytest.approx(want, abs=1e-4)
    assert any(math.isfinite(v) for row in fast for v in row)


def test_select_hook_observes_without_changing_the_search(setup):
    """`prefix_thresholds` is the decoder with an `on_select` hook: the ranking is the same with or
    without one, and the hook sees each step's top 2B candidate scores of the prompts still searching."""
    from bearrec.decoding import BthCandidateScores, Prefilled, _decode, prefix_thresholds

    model, tok, enc, prompts = setup
    seen = []

    def hook(top_scores, searching):
        seen.append((top_scores.shape, int(searching.sum())))
        recorder(top_scores, searching)

    recorder = BthCandidateScores(len(prompts[:6]), 3)
    run = Prefilled(model, prompts[:6], True, tok.pad_token_id, None)
    with torch.no_grad(), run.attention():
        hooked = _decode(run, enc.trie, 3, 1.0, on_select=hook)
    plain = beam_search(model, enc.trie, prompts[:6], 3, pad_token_id=tok.pad_token_id)
    assert [(r.paths, r.scores) for r in hooked] == [(r.paths, r.scores) for r in plain]
    assert seen and all(shape[0] == 6 and shape[1] <= 6 for shape, _ in seen) and seen[0][1] == 6
    assert recorder.per_prompt == prefix_thresholds(model, enc.trie, prompts[:6], 3, pad_token_id=tok.pad_token_id)


# ---- forced chains: a beam at a one-child trie node is scored unfed, fed when it next branches ----
def _chain_trie():
    """Token paths with long forced chains: shared prefixes that branch late, titles that are
    prefixes of others, a title whose every token (EOS included) is forced, a one-token title."""
    eos = 0
    paths = {(5, 6, 7, 8, 9, 10), (5, 6, 7, 8, 9, 11, 12, 13, 14, 15), (5, 6, 7), (5, 6, 7, 8),
             (20, 21, 22, 23, 24, 25, 26), (30,), (40, 41, 42, 43, 44, 45, 46, 47), (40, 41, 42, 50),
             (40, 41, 42, 50, 51, 52, 53, 54, 55, 56, 57, 58), (60, 61), (60, 62, 63, 64, 65, 66, 67, 68, 69)}
    rng = random.Random(3)
    while len(paths) < 24:
        head = rng.randint(70, 250)
        paths.add((head, *(rng.randint(1, 250) for _ in range(rng.randint(0, 9)))))
    paths = sorted(paths)
    return TitleTrie([[*p, eos] for p in paths], [[i] for i in range(len(paths))], eos), eos


@pytest.fixture(scope="module")
def chain_setup():
    trie, eos = _chain_trie()
    model = build_tiny_model(TINY, vocab_size=300, eos_token_id=eos, seed=4).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    rng = random.Random(5)
    shared = [rng.randint(1, 299) for _ in range(6)]  # a common prefix, as a prompt template gives
    prompts = [shared + [rng.randint(1, 299) for _ in range(rng.randint(1, 7))] for _ in range(12)]
    return model, trie, prompts


@pytest.mark.parametrize("constrained, length_penalty, ghost, num_beams", [
    (True, 1.0, None, 4), (True, 0.0, None, 3), (True, 1.0, 0.9, 5), (True, 2.0, 1.0, 2), (True, 1.0, None, 1),
    (True, 1.0, None, 40), (False, 1.0, None, 4), (False, 0.0, 0.6, 6), (False, 1.0, None, 40)])
def test_forced_chains_equal_one_step_at_a_time(chain_setup, constrained, length_penalty, ghost, num_beams):
    """The chain-skipping decoder against the one-step-at-a-time schedule (`forced_chains=False`):
    same titles, same order, scores to 1e-5 (the chunked forwards round differently)."""
    from bearrec.decoding import DecodeStats

    model, trie, prompts = chain_setup
    kw = dict(constrained_softmax=constrained, length_penalty=length_penalty, ghost_threshold=ghost, pad_token_id=1)
    fast_stats, slow_stats = DecodeStats(), DecodeStats()
    fast = beam_search(model, trie, prompts, num_beams, stats=fast_stats, **kw)
    slow = beam_search(model, trie, prompts, num_beams, forced_chains=False, stats=slow_stats, **kw)
    for a, b in zip(fast, slow):
        assert a.paths == b.paths and a.nodes == b.nodes
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
    assert fast_stats.steps == slow_stats.steps and fast_stats.all_forced_steps > 0
    assert slow_stats.forwards == slow_stats.steps - 1 and slow_stats.tokens_fed == slow_stats.beam_steps - len(prompts)
    if constrained:  # forced beams are not fed: fewer forwards and tokens
        assert fast_stats.forwards < slow_stats.forwards and fast_stats.tokens_fed < slow_stats.tokens_fed
    if num_beams > len(trie):  # every title comes back, scored exactly
        for prompt, ranked in zip(prompts[:3], fast):
            exact = exhaustive_scores(model, trie, prompt, constrained_softmax=constrained,
                                      length_penalty=length_penalty, ghost_threshold=ghost)
            order = sorted(exact, key=lambda p: -exact[p])
            assert same_ranking(ranked, Ranked(order, [exact[p] for p in order], []), 1e-5)


def test_forced_chains_match_hf_generate(chain_setup):
    model, trie, prompts = chain_setup
    for constrained in (True, False):
        kw = dict(constrained_softmax=constrained, pad_token_id=1)
        _assert_all_same(beam_search(model, trie, prompts, 4, **kw), hf_beam_search(model, trie, prompts, 4, **kw))


@pytest.mark.parametrize("constrained", [True, False])
def test_excluded_titles_inside_forced_chains_match_hf_generate(chain_setup, constrained):
    """Titles whose EOS ends a forced chain, excluded: the chain-skipping decoder, the one-step
    schedule and generate (`ExcludeTitles`) agree."""
    model, trie, prompts = chain_setup
    paths = sorted(set(trie.item_paths.values()))
    excluded = [[trie.node_of(p) for p in paths[i % 3::3]] for i in range(len(prompts))]
    kw = dict(constrained_softmax=constrained, pad_token_id=1)
    fast = beam_search(model, trie, prompts, 4, excluded=excluded, **kw)
    slow = beam_search(model, trie, prompts, 4, excluded=excluded, forced_chains=False, **kw)
    for a, b in zip(fast, slow):
        assert a.paths == b.paths and a.scores == pytest.approx(b.scores, abs=1e-5)
    by_node = {trie.node_of(p): p for p in paths}
    _assert_all_same(fast, hf_beam_search(model, trie, prompts, 4, excluded=[{by_node[n] for n in e} for e in excluded],
                                          **kw))
    assert all(r.paths and not set(r.nodes) & set(e) for r, e in zip(fast, excluded))


def test_forced_chains_keep_prefix_thresholds(chain_setup):
    from bearrec.decoding import prefix_thresholds

    model, trie, prompts = chain_setup
    fast = prefix_thresholds(model, trie, prompts, 3, pad_token_id=1)
    slow = prefix_thresholds(model, trie, prompts, 3, pad_token_id=1, forced_chains=False)
    assert [len(r) for r in fast] == [len(r) for r in slow]
    assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(fast, slow))


@pytest.mark.parametrize("prompts", [[[7]], [[7], [9, 3]], [[4, 4, 4], [4, 4, 4], [4, 4, 4, 4]], [[3, 1, 2], [8, 1, 2]]])
def test_prompts_without_or_with_total_common_prefix(chain_setup, prompts):
    """The prefill computes the prompts' common prefix once: none, all of one prompt, one token."""
    model, trie, _ = chain_setup
    shared = beam_search(model, trie, prompts, 4, pad_token_id=1, shared_prefix=True)
    plain = beam_search(model, trie, prompts, 4, pad_token_id=1, shared_prefix=False)
    alone = [beam_search(model, trie, [p], 4, pad_token_id=1)[0] for p in prompts]
    assert all(same_ranking(a, b, 1e-5) and same_ranking(a, c, 1e-5) for a, b, c in zip(shared, plain, alone))


def test_full_softmax_chain_runs_forced_steps_in_one_forward(chain_setup):
    """One prompt, one beam, whole-vocabulary softmax: after the first branching step every step
    until EOS is forced for the only beam, so one forward serves them all."""
    from bearrec.decoding import DecodeStats

    model, trie, prompts = chain_setup
    for prompt in prompts[:4]:
        fast_stats, slow_stats = DecodeStats(), DecodeStats()
        (fast,) = beam_search(model, trie, [prompt], 1, constrained_softmax=False, pad_token_id=1, stats=fast_stats)
        (slow,) = beam_search(model, trie, [prompt], 1, constrained_softmax=False, pad_token_id=1, forced_chains=False,
                              stats=slow_stats)
        assert fast.paths == slow.paths and fast.scores == pytest.approx(slow.scores, abs=1e-5)
        assert fast_stats.forwards < slow_stats.forwards == slow_stats.steps - 1


def _history_titles(enc, histories):
    return [[enc.trie.node_of(enc.target_ids(i)) for i in sorted(set(h))] for h in histories]


@pytest.mark.parametrize("constrained", [True, False])
def test_excluded_titles_are_never_returned_and_the_rest_rank_as_exhaustive_scoring(setup, constrained):
    """A beam wide enough to keep every title: with the history's titles excluded, exactly the other
    titles come back, in the order and with the scores exhaustive teacher forcing gives them."""
    model, tok, enc, _ = setup
    num_titles = len(enc.trie)
    histories = [(1, 4), (9, 10, 11), (5,)]
    prompts = [enc.prompt_ids(h) for h in histories]
    excluded = _history_titles(enc, histories)
    got = beam_search(model, enc.trie, prompts, num_titles + 3, constrained_softmax=constrained,
                      pad_token_id=tok.pad_token_id, excluded=excluded)
    for prompt, nodes, ranked in zip(prompts, excluded, got):
        exact = exhaustive_scores(model, enc.trie, prompt, constrained_softmax=constrained)
        order = sorted((p for p in exact if enc.trie.node_of(p) not in nodes), key=lambda p: -exact[p])
        assert same_ranking(ranked, Ranked(order, [exact[p] for p in order], []))
        assert len(ranked.paths) == num_titles - len(nodes)  # "Red Pen" (items 1 and 8) goes as one title


@pytest.mark.parametrize("constrained, num_beams", [(False, 2), (False, 5), (True, 3)])
def test_excluded_titles_match_hf_generate_with_their_eos_masked(setup, constrained, num_beams):
    """Narrow beams: an excluded title's EOS scores -inf after the softmax, so it never finishes and
    its place goes to the next candidate, as in generate with a logits processor masking that EOS
    (`ExcludeTitles`); and the results differ from the unexcluded search."""
    model, tok, enc, _ = setup
    rng = random.Random(5)
    histories = [tuple(rng.randint(1, 16) for _ in range(rng.randint(1, 4))) for _ in range(20)]
    prompts = [enc.prompt_ids(h) for h in histories]
    excluded = _history_titles(enc, histories)
    kw = dict(constrained_softmax=constrained, pad_token_id=tok.pad_token_id)
    ours = beam_search(model, enc.trie, prompts, num_beams, excluded=excluded, **kw)
    paths = {n: p for p in enc.trie.item_paths.values() for n in [enc.trie.node_of(p)]}
    ref = hf_beam_search(model, enc.trie, prompts, num_beams, excluded=[{paths[n] for n in e} for e in excluded], **kw)
    _assert_all_same(ours, ref)
    plain = beam_search(model, enc.trie, prompts, num_beams, **kw)
    assert all(not set(r.nodes) & set(e) for r, e in zip(ours, excluded))
    assert any(set(r.nodes) & set(e) for r, e in zip(plain, excluded))  # the exclusion had work to do


def test_excluded_titles_for_every_prompt_or_none(setup):
    model, tok, enc, prompts = setup
    with pytest.raises(ValueError, match="excluded names titles for 1 prompts, not 2"):
        beam_search(model, enc.trie, prompts[:2], 3, excluded=[[1]])


@pytest.mark.parametrize("shared_prefix", [True, False])
@pytest.mark.parametrize("softmaxes", [(True, False), (False, True), (True, True, False)])
def test_searches_from_one_prefill_equal_separate_searches(chain_setup, shared_prefix, softmaxes):
    """`beam_search_softmaxes`: each softmax's results are exactly `beam_search`'s with it (the fork
    reads the same prompt K/V, so not even rounding differs), in the order asked; with the shared-prefix
    cache the prompts are prefilled once (every forward counted: the searches together make the forwards
    of the separate ones less one prefill per extra search, two forwards: the common prefix and the
    packed rest), without it once per search (one padded forward each)."""
    from bearrec.decoding import beam_search_softmaxes
    from bearrec.feeding import _Scorer

    model, trie, prompts = chain_setup
    kw = dict(length_penalty=1.0, pad_token_id=1, shared_prefix=shared_prefix, excluded=[[3, 7]] * len(prompts))
    calls = []
    real = _Scorer.forward

    def counted(self, *args, **kwargs):
        calls.append(args[3] is None)  # no cache given: a prefill forward (common prefix or padded prompts)
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Scorer, "forward", counted)
        both = beam_search_softmaxes(model, trie, prompts, 4, softmaxes, **kw)
        together, separate = len(calls), 0
        assert calls.count(True) == (1 if shared_prefix else len(softmaxes))
        for softmax, got in zip(softmaxes, both):
            calls.clear()
            alone = beam_search(model, trie, prompts, 4, constrained_softmax=softmax, **kw)
            separate += len(calls)
            assert [(r.paths, r.nodes, r.scores) for r in got] == [(r.paths, r.nodes, r.scores) for r in alone]
    assert together == separate - (len(softmaxes) - 1) * (2 if shared_prefix else 0)
    assert [r.paths for r in both[0]] != [r.paths for r in both[-1]]  # the softmax changed something to check


def test_a_fork_needs_a_fresh_shared_prefill(chain_setup):
    from bearrec.decoding import beam_search_softmaxes
    from bearrec.feeding import Prefilled

    model, trie, prompts = chain_setup
    with pytest.raises(ValueError, match="softmaxes names no search"):
        beam_search_softmaxes(model, trie, prompts, 4, ())
    with pytest.raises(ValueError, match="shared-prefix cache"):
        Prefilled(model, prompts[:2], True, 1, False).fork(False)
    run = Prefilled(model, prompts[:2], True, 1, True)
    twin = run.fork(False)
    assert twin.scorer.constrained is False and run.scorer.constrained is True
    assert twin.cache.prompt_k[0] is run.cache.prompt_k[0]  # the prompts' K/V shared, not copied
    run.feed(torch.arange(2), torch.arange(2), torch.tensor([[5], [20]]), torch.zeros(2, dtype=torch.long),
             torch.arange(2), 1)
    with pytest.raises(ValueError, match="nothing generated yet"):
        run.fork(False)
    assert not bool(twin.cache.length.any())  # the twin's rows did not follow the feed
