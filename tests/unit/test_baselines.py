"""CFT, D2LR (reconstructed) and IGD-Tuning against values derived by hand (math module, no torch in
the expectations), their trie statistics, and their settings' bounds."""

import math
import random

import numpy as np
import pytest
import torch

from bearrec import methods
from bearrec.config import CftConfig, D2lrConfig, IgdConfig, LossConfig, load_config
from bearrec.errors import BearrecError, ConfigError
from bearrec.losses import Allowed
from bearrec.losses.base import ratio
from bearrec.losses.baselines import cft_parts, cft_weights, d2lr_parts, d2lr_weights, igd_parts
from bearrec.popularity import TargetCounts
from bearrec.trie import TitleTrie


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def softmax(*xs):
    return [math.exp(x - lse(*xs)) for x in xs]


def h(p):  # one title's entropy term
    return -p * math.log(p)


# ---- CFT ---------------------------------------------------------------------------------------
# Two responses, vocabulary 3: the first of 3 tokens (targets 0, 1, 2), the second of 1 (target 1).
Z_H = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
Z_0 = [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]
TARGETS = [0, 1, 2, 1]
# CE of z_h, and of z_h - z_0 = [[1,0,0], [0,1,0], [-1,0,0], [1,0,-1]]
CE_H = [-1 + lse(1, 0, 0), -2 + lse(0, 2, 0), math.log(3), -1 + lse(1, 1, 0)]
CE_D = [-1 + lse(1, 0, 0), -1 + lse(0, 1, 0), lse(-1, 0, 0), lse(1, 0, -1)]


def test_cft_weights_fall_linearly_from_one_to_beta():
    # n = 3, beta = 0.25: step (1 - 0.25) / 2 = 0.375 -> 1, 0.625, 0.25; n = 1 -> 1 (no 0/0); n = 2 -> 1, beta
    assert cft_weights([3, 1, 2], 0.25).tolist() == pytest.approx([1, 0.625, 0.25, 1, 1, 0.25])
    assert cft_weights([4], 1.0).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("alpha, beta", [(0.1, 0.25), (0.025, 0.1), (1.0, 0.0)])
def test_cft_loss_and_gradients_by_hand(alpha, beta):
    w = [1, 1 - (1 - beta) / 2, beta, 1]
    total = sum(w)
    expected = (sum(a * b for a, b in zip(w, CE_H)) + alpha * sum(a * b for a, b in zip(w, CE_D))) / total
    z_h = torch.tensor(Z_H, requires_grad=True)
    z_0 = torch.tensor(Z_0, requires_grad=True)
    num, den = cft_parts(z_h, z_0, torch.tensor(TARGETS), [3, 1], alpha=alpha, beta=beta)
    assert float(den) == pytest.approx(total) and not den.requires_grad
    loss = ratio(num, den)
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # last token (w = 1, target 1): d/dz_0 = -(alpha / W)(softmax(z_h - z_0) - e_1), the difference not detached;
    # d/dz_h = (1 / W)[(softmax(z_h) - e_1) + alpha (softmax(z_h - z_0) - e_1)]
    s_d, s_h, e1 = softmax(1, 0, -1), softmax(1, 1, 0), [0, 1, 0]
    assert z_0.grad[3].tolist() == pytest.approx([-alpha / total * (s - e) for s, e in zip(s_d, e1)], abs=1e-6)
    assert z_h.grad[3].tolist() == pytest.approx([(a - e + alpha * (b - e)) / total
                                                  for a, b, e in zip(s_h, s_d, e1)], abs=1e-6)
    # second token (w = 1 - (1 - beta)/2): the same with its weight
    s_d, s_h = softmax(0, 1, 0), softmax(0, 2, 0)
    assert z_0.grad[1].tolist() == pytest.approx([-alpha * w[1] / total * (s - e) for s, e in zip(s_d, e1)], abs=1e-6)


def test_cft_without_its_term_and_decay_is_sft():
    z_h, z_0 = torch.tensor(Z_H), torch.tensor(Z_0)
    loss = ratio(*cft_parts(z_h, z_0, torch.tensor(TARGETS), [3, 1], alpha=0.0, beta=1.0))
    assert float(loss) == pytest.approx(sum(CE_H) / 4, abs=1e-6)
    with pytest.raises(ValueError, match="must match"):
        cft_parts(z_h, z_0[:3], torch.tensor(TARGETS), [3, 1], alpha=0.1, beta=0.25)
    with pytest.raises(ValueError, match="add up to the 4 response tokens"):
        cft_parts(z_h, z_0, torch.tensor(TARGETS), [2, 1], alpha=0.1, beta=0.25)


# ---- the hand-made trie --------------------------------------------------------------------------
# EOS = 9. Titles (token paths) and their items; D is never a training target; C has two items.
#   A [1, 2, 9]: item 10     B [1, 3, 9]: item 11     C [4, 5, 9]: items 12, 13
#   D [4, 6, 9]: item 14     E [7, 9]: item 15
# Training targets 10, 10, 11, 12, 13, 15: N = 6; by title A 2, B 1, C 2 (12 and 13 add), D 0, E 1.
PATHS = {"A": [1, 2, 9], "B": [1, 3, 9], "C": [4, 5, 9], "D": [4, 6, 9], "E": [7, 9]}
ITEMS = {"A": [10], "B": [11], "C": [12, 13], "D": [14], "E": [15]}
TRAIN_TARGETS = [10, 10, 11, 12, 13, 15]


@pytest.fixture
def counts():
    trie = TitleTrie(list(PATHS.values()), list(ITEMS.values()), 9)
    return TargetCounts(trie, TRAIN_TARGETS)


def node(c, path):
    return c.trie.node_of(path)


def test_target_counts_entropy_and_information_gain_by_hand(counts):
    c = counts
    assert c.total == 6
    expected_counts = {(): 6, (1,): 3, (1, 2): 2, (1, 2, 9): 2, (1, 3): 1, (4,): 2, (4, 5): 2, (4, 5, 9): 2,
                       (4, 6): 0, (4, 6, 9): 0, (7,): 1, (7, 9): 1}
    assert {p: int(c.node_counts[node(c, p)]) for p in expected_counts} == expected_counts
    # S(node): sum of -p log p over the titles below, p = 2/6 (A, C), 1/6 (B, E), 0 (D)
    a, b = h(2 / 6), h(1 / 6)
    assert c.entropy[0] == pytest.approx(2 * a + 2 * b)
    ig = {(1,): a + b, (1, 2): b, (1, 2, 9): 0.0, (1, 3): a, (4,): a + 2 * b, (4, 5): 0.0, (4, 5, 9): 0.0,
          (4, 6): a, (7,): 2 * a + b, (7, 9): 0.0}
    assert {p: float(c.information_gain[node(c, p)]) for p in ig} == pytest.approx(ig)
    # decisive = IG > 0; token 5 after 4 leaves out only D, never trained on: IG 0 (unseen items have p = 0)
    assert {p: bool(c.decisive[node(c, p)]) for p in ig} == {p: v > 0 for p, v in ig.items()}
    assert c.information_gain[0] == 0 and not c.decisive[0]
    assert np.array_equal(c.information_gain > 0, c.decisive)  # exact zeros where nothing is left out


def test_subtree_sums_equal_a_sum_along_every_path():
    rng = random.Random(0)
    paths = sorted({tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 5))) + (9,) for _ in range(60)})
    trie = TitleTrie(paths, [[i] for i in range(len(paths))], 9)
    targets = [rng.randrange(len(paths)) for _ in range(200)]
    c = TargetCounts(trie, targets)
    naive = np.zeros(trie.num_nodes)
    for t in targets:
        for k in range(len(paths[t]) + 1):
            naive[trie.node_of(paths[t][:k])] += 1
    assert np.array_equal(c.node_counts, naive)
    with pytest.raises(BearrecError, match="training target item 999 has no title"):
        TargetCounts(trie, [999])


def _batch(c, titles, cfg, logits):
    """A Batch of the responses of `titles` as training builds it for target_counts methods."""
    targets = [t for name in titles for t in PATHS[name]]
    nodes = torch.tensor([n for name in titles for n in c.trie.walk(PATHS[name])])
    lengths = [len(PATHS[name]) for name in titles]
    rows = torch.repeat_interleave(torch.arange(len(titles)), torch.tensor(lengths))
    return methods.Batch(logits, torch.tensor(targets), Allowed.from_trie(c.trie, nodes), cfg, rows, lengths,
                         nodes=nodes, counts=c)


def _logits(n, vocab=10, grad=False):
    return torch.tensor([[math.sin(3 * i + j) for j in range(vocab)] for i in range(n)], requires_grad=grad)


def _ce(logits, targets):
    rows = logits.tolist()
    return [-r[t] + lse(*r) for r, t in zip(rows, targets)]


# ---- IGD-Tuning ----------------------------------------------------------------------------------
def test_igd_weights_zero_information_gain_tokens_by_beta(counts):
    # A [1, 2, 9]: decisive, decisive, not (EOS); C [4, 5, 9]: decisive, not (only D, unseen, left out), not
    logits = _logits(6)
    ce = _ce(logits, PATHS["A"] + PATHS["C"])
    w = [1, 1, 0.2, 1, 0.2, 0.2]
    expected = sum(a * b for a, b in zip(w, ce)) / 3.6
    batch = _batch(counts, ["A", "C"], LossConfig(name="igd", igd=IgdConfig(beta=0.2)), logits)
    num, den = methods.get("igd").parts(batch)
    assert float(den) == pytest.approx(3.6) and float(num / den) == pytest.approx(expected, abs=1e-6)
    assert float(ratio(*igd_parts(logits, batch.targets, torch.ones(6, dtype=torch.bool), beta=0.2))) == \
        pytest.approx(sum(ce) / 6, abs=1e-6)  # all decisive: sft


# ---- D2LR ------------------------------------------------------------------------------------------
def test_d2lr_item_weights_by_hand():
    # N = 10; two examples with n_y = 5 and 1, lengths 2 and 1, beta = 0.5:
    # ips = sqrt(2), sqrt(10); batch mean (sqrt(2) + sqrt(10)) / 2
    w = d2lr_weights(torch.tensor([5, 1]), 10, [2, 1], 0.5)
    m = (math.sqrt(2) + math.sqrt(10)) / 2
    assert w.tolist() == pytest.approx([math.sqrt(2) / m, math.sqrt(2) / m, math.sqrt(10) / m])
    assert d2lr_weights(torch.tensor([5, 1]), 10, [2, 1], 0.0).tolist() == [1, 1, 1]  # beta 0: sft
    # alpha: token shares q = 1/2, 1, 1/4 -> (1/q)^0.5 = sqrt(2), 1, 2, normalised by their mean
    tok = [math.sqrt(2), 1, 2]
    t = sum(tok) / 3
    got = d2lr_weights(torch.tensor([5, 1]), 10, [2, 1], 0.5, alpha=0.25, token_share=torch.tensor([0.5, 1, 0.25]))
    assert got.tolist() == pytest.approx([0.75 * a + 0.25 * b / t for a, b in zip(w.tolist(), tok)])
    with pytest.raises(ValueError, match="needs the token-level shares"):
        d2lr_weights(torch.tensor([5, 1]), 10, [2, 1], 0.5, alpha=0.25)


def test_d2lr_loss_from_the_training_counts_by_hand(counts):
    # A (count 2) and E (count 1) of N = 6, beta = 1: ips 3 and 6, batch mean 4.5 -> w 2/3 and 4/3;
    # loss = (2/3 (CE1 + CE2 + CE3) + 4/3 (CE4 + CE5)) / 5 (the response-token count)
    logits = _logits(5, grad=True)
    ce = _ce(logits, PATHS["A"] + PATHS["E"])
    w = [2 / 3] * 3 + [4 / 3] * 2
    batch = _batch(counts, ["A", "E"], LossConfig(name="d2lr", d2lr=D2lrConfig(beta=1.0)), logits)
    num, den = methods.get("d2lr").parts(batch)
    assert float(den) == 5 and float(num.detach() / den) == pytest.approx(sum(a * b for a, b in zip(w, ce)) / 5, abs=1e-6)
    (num / den).backward()  # d loss / d z_t = w_t / 5 (softmax(z_t) - e_y)
    row = logits.detach()[3].tolist()
    assert logits.grad[3].tolist() == pytest.approx([4 / 3 / 5 * (s - (j == 7)) for j, s in enumerate(softmax(*row))],
                                                    abs=1e-6)
    # duplicate titles add: C's items 12 and 13 count 2 together, as A does -> equal weights
    flat = _batch(counts, ["A", "C"], LossConfig(name="d2lr", d2lr=D2lrConfig(beta=1.0)), _logits(6))
    num, den = methods.get("d2lr").parts(flat)
    assert float(num / den) == pytest.approx(sum(_ce(flat.logits, flat.targets.tolist())) / 6, abs=1e-6)
    # alpha: token shares along A: 3/6, 2/3, 2/2; along E: 1/6, 1/1
    tok = [2, 1.5, 1, 6, 1]
    mean = sum(tok) / 5
    blended = [0.5 * a + 0.5 * b / mean for a, b in zip(w, tok)]
    batch = _batch(counts, ["A", "E"], LossConfig(name="d2lr", d2lr=D2lrConfig(beta=1.0, alpha=0.5)), logits)
    assert float(ratio(*methods.get("d2lr").parts(batch)).detach()) == pytest.approx(
        sum(a * b for a, b in zip(blended, ce)) / 5, abs=1e-6)
    assert float(ratio(*d2lr_parts(logits, batch.targets, torch.ones(5))).detach()) == pytest.approx(sum(ce) / 5, abs=1e-6)


# ---- settings --------------------------------------------------------------------------------------
@pytest.mark.parametrize("build, message", [
    (lambda: CftConfig(alpha=-0.1), "loss.cft.alpha must be >= 0"),
    (lambda: CftConfig(beta=1.5), r"loss.cft.beta must be in \[0, 1\]"),
    (lambda: CftConfig(beta=-1), "loss.cft.beta must be >= 0"),
    (lambda: D2lrConfig(beta=-0.05), "loss.d2lr.beta must be >= 0"),
    (lambda: D2lrConfig(alpha=1.5), r"loss.d2lr.alpha must be in \[0, 1\]"),
    (lambda: IgdConfig(beta=-0.2), "loss.igd.beta must be >= 0"),
    (lambda: load_config(None, ["loss.name=igd", "loss.igd.beta=-1"]), "loss.igd.beta must be >= 0"),
])
def test_bad_settings_fail_when_the_section_is_built(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_defaults_are_the_documented_ones():
    assert (CftConfig().alpha, CftConfig().beta) == (0.1, 0.25)  # the CFT authors' code
    assert (D2lrConfig().beta, D2lrConfig().alpha) == (0.1, 0.0)  # alpha 0: item-level only
    assert IgdConfig().beta == 0.2  # the IGD authors' Games value, between Books' 0.1 and Toys' 0.5
