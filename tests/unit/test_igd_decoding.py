"""IGD's decoding rule (Lin et al. 2025; BASELINES.md): the per-node weights worked out by hand, and
the decoder with those weights against two independent oracles (Hugging Face `generate` with a
logits processor that applies the weights, and exhaustive teacher-forced scoring)."""

import math
import random

import pytest
import torch

from bearrec.config import TinyModelConfig, load_config
from bearrec.decoding import Ranked, beam_search
from bearrec.errors import BearrecError, ConfigError
from bearrec.modeling import build_tiny_model
from bearrec.oracles import exhaustive_scores, hf_beam_search, same_ranking
from bearrec.popularity import TargetCounts
from bearrec.trie import TitleTrie

EOS = 9


def _hand_trie(with_unseen: bool = False):
    """A = [1, 2], B = [1, 3], C = [4] (items 1, 2, 3); D = [1, 5] (item 4) never trained on."""
    paths = [[1, 2, EOS], [1, 3, EOS], [4, EOS]] + ([[1, 5, EOS]] if with_unseen else [])
    return TitleTrie(paths, [[i + 1] for i in range(len(paths))], EOS)


def test_weights_worked_out_by_hand():
    # training targets A x3, B x1, C x1: p = 0.6, 0.2, 0.2; h(p) = -p ln p
    # h(.6) = 0.306495, h(.2) = 0.321888; S(root) = 0.950271, S(after 1) = h(.6) + h(.2) = 0.628383,
    # S(after 4) = S(C) = 0.321888, S(after 1,2) = 0.306495, S(after 1,3) = 0.321888
    # root's children: IG(1) = 0.950271 - 0.628383 = 0.321888, IG(4) = 0.950271 - 0.321888 = 0.628383
    #   -> token 1 has the least IG (weight 1), token 4 the most (weight 1 - alpha)
    # after 1: IG(2) = 0.628383 - 0.306495 = 0.321888, IG(3) = 0.628383 - 0.321888 = 0.306495
    #   -> token 3 least (1), token 2 most (1 - alpha)
    # every EOS is its node's only child: weight 1
    trie = _hand_trie()
    counts = TargetCounts(trie, [1, 1, 1, 2, 3])
    w = counts.decoding_weights(0.25)
    node = trie.node_of
    assert float(w[node([1])]) == pytest.approx(1.0)
    assert float(w[node([4])]) == pytest.approx(0.75)
    assert float(w[node([1, 2])]) == pytest.approx(0.75)
    assert float(w[node([1, 3])]) == pytest.approx(1.0)
    assert [float(w[node(p)]) for p in ([1, 2, EOS], [1, 3, EOS], [4, EOS])] == [1.0, 1.0, 1.0]
    assert float(w[0]) == 1.0
    assert counts.information_gain[node([4])] == pytest.approx(0.6 * math.log(1 / 0.6) + 0.2 * math.log(5))


def test_an_unseen_sibling_has_the_largest_gain_and_equal_gains_weigh_one():
    # D (never a training target) adds no entropy: IG(5) = S(after 1) - 0 = 0.628383, the most among
    # tokens 2, 3, 5 -> weight 1 - alpha; token 2 sits between: (0.321888 - 0.306495) / (0.628383 - 0.306495)
    trie = _hand_trie(with_unseen=True)
    w = TargetCounts(trie, [1, 1, 1, 2, 3]).decoding_weights(0.4)
    node = trie.node_of
    assert float(w[node([1, 5])]) == pytest.approx(0.6)
    assert float(w[node([1, 3])]) == pytest.approx(1.0)
    assert float(w[node([1, 2])]) == pytest.approx(1 - 0.4 * (0.321888 - 0.306495) / (0.628383 - 0.306495), abs=1e-5)
    # A and B trained on equally: tokens 2 and 3 carry the same gain, so both weigh 1 (no 0/0)
    w = TargetCounts(_hand_trie(), [1, 2, 3, 3]).decoding_weights(0.4)
    assert float(w[_hand_trie().node_of([1, 2])]) == float(w[_hand_trie().node_of([1, 3])]) == 1.0


def _random_trie(seed: int):
    rng = random.Random(seed)
    paths = set()
    while len(paths) < 14:
        head = rng.choice([5, 6, 7])
        paths.add((head, *(rng.randint(10, 60) for _ in range(rng.randint(0, 4)))))
    paths = sorted(paths)
    return TitleTrie([[*p, 0] for p in paths], [[i + 1] for i in range(len(paths))], 0), rng


@pytest.fixture(scope="module")
def igd_setup():
    trie, rng = _random_trie(2)
    targets = [rng.choice(range(1, 11)) for _ in range(40)]  # items 11-14 never trained on
    weights = TargetCounts(trie, targets).decoding_weights(0.3)
    tiny = TinyModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = build_tiny_model(tiny, vocab_size=64, eos_token_id=0, seed=7).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    prompts = [[rng.randint(1, 63) for _ in range(rng.randint(2, 6))] for _ in range(8)]
    return model, trie, weights, prompts


@pytest.mark.parametrize("num_beams, constrained, length_penalty", [(3, False, 0.0), (5, True, 0.0), (4, False, 1.0)])
def test_igd_decoder_matches_generate_with_the_weights_as_a_logits_processor(igd_setup, num_beams, constrained,
                                                                             length_penalty):
    model, trie, weights, prompts = igd_setup
    kw = dict(constrained_softmax=constrained, length_penalty=length_penalty, pad_token_id=1)
    ours = beam_search(model, trie, prompts, num_beams, token_weights=weights, **kw)
    ref = hf_beam_search(model, trie, prompts, num_beams, token_weights=weights, **kw)
    assert all(same_ranking(a, b, 1e-5) for a, b in zip(ours, ref)), (ours[0], ref[0])
    plain = beam_search(model, trie, prompts, num_beams, **kw)
    assert any(a.paths != b.paths for a, b in zip(ours, plain))  # the weights change rankings here


def test_wide_igd_beam_equals_exhaustive_weighted_scoring(igd_setup):
    model, trie, weights, prompts = igd_setup
    for prompt in prompts[:4]:
        (ranked,) = beam_search(model, trie, [prompt], len(trie) + 2, constrained_softmax=False, length_penalty=0.0,
                                token_weights=weights)
        exact = exhaustive_scores(model, trie, prompt, constrained_softmax=False, length_penalty=0.0,
                                  token_weights=weights)
        order = sorted(exact, key=lambda p: -exact[p])
        assert same_ranking(ranked, Ranked(order, [exact[p] for p in order], []), 1e-5)


def test_bad_igd_settings_are_clear_errors(igd_setup, tmp_path):
    model, trie, weights, prompts = igd_setup
    with pytest.raises(ValueError, match="one weight per trie node"):
        beam_search(model, trie, prompts[:1], 2, token_weights=weights[:-1])
    with pytest.raises(ConfigError, match="decode.igd_alpha must be"):
        load_config(None, ["decode.igd_alpha=1.5"])
    with pytest.raises(ConfigError, match="needs decode.igd_alpha"):
        load_config(None, ["decode.preset=igd", "decode.constrained_softmax=false", "decode.length_penalty=0"])
    with pytest.raises(ConfigError, match="decode.preset igd means decode.constrained_softmax=False"):
        load_config(None, ["decode.preset=igd", "decode.igd_alpha=0.2", "decode.constrained_softmax=true"])
    cfg = load_config(None, ["decode.preset=igd", "decode.igd_alpha=0.2"])  # the preset fills the rest
    assert (cfg.decode.constrained_softmax, cfg.decode.length_penalty) == (False, 0.0)
    from bearrec.evaluation import Recommender

    with pytest.raises(BearrecError, match="needs the training targets"):
        Recommender(model, None, cfg.decode)  # checked before anything else is read
