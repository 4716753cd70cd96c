"""`bear` with `form=reference` against an independent dense re-implementation of the authors'
released loss (BEAR-SIGIR-2026, `train_bear.py`, `CustomTrainer.compute_loss`), written here from
its description in METHOD.md section 4: a dense (tokens x vocabulary) mask, -inf fill, softmax over
the row, the B-th largest probability of the whole row, a zero threshold replaced by the smallest
valid probability, detached weights normalised over positions with more than one valid token.
Values and gradients; positions with 1, 2..B-1 and >= B valid tokens; fp32 and bf16 logits."""

import pytest
import torch

from bearrec.losses import Allowed, bear_loss


def released_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, k: int, lam: float,
                  xi: float, tau: float = 1.0) -> torch.Tensor:
    """Dense oracle; `logits` float32 (T, V), `mask` bool (T, V) of the trie-valid tokens."""
    logits = logits.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(logits / tau, dim=-1)
    pos = probs.gather(1, targets[:, None])[:, 0]
    ce = -pos.log()
    threshold = probs.topk(k, dim=-1).values[:, -1].detach()
    smallest = probs.masked_fill(~mask, float("inf")).min(dim=-1).values
    threshold = torch.where(threshold == 0, smallest, threshold).detach()
    weights = (torch.sigmoid((pos.log() - threshold.log()) / xi).detach() * lam + 1).clone()
    branching = mask.sum(dim=-1) > 1
    weights[branching] = weights[branching] / (weights[branching].sum() + 1e-8)
    return (ce * weights).sum()


def random_case(seed: int, k: int, vocab: int = 40, positions: int = 48):
    """Random valid sets whose sizes cover 1, 2..k-1 and >= k in every case."""
    g = torch.Generator().manual_seed(seed)
    sizes = [1, 2, k - 1, k, k + 3] + torch.randint(1, vocab, (positions - 5,), generator=g).tolist()
    sets, targets = [], []
    for n in sizes:
        tokens = torch.randperm(vocab, generator=g)[:n].tolist()
        sets.append(tokens)
        targets.append(tokens[int(torch.randint(n, (1,), generator=g))])
    mask = torch.zeros(positions, vocab, dtype=torch.bool)
    for i, tokens in enumerate(sets):
        mask[i, tokens] = True
    logits = torch.randn(positions, vocab, generator=g) * 3
    return logits, torch.tensor(targets), Allowed.from_lists(sets), mask


def both(logits, targets, allowed, mask, dtype, *, short_sets="min_valid", **kw):
    """(ours, oracle) values and gradients with respect to the float32 logits."""
    x = logits.clone().requires_grad_(True)
    ours = bear_loss(x.to(dtype), targets, allowed, form="reference", short_sets=short_sets, **kw)
    ours.backward()
    y = logits.to(dtype).float().detach().clone().requires_grad_(True)  # the oracle sees the same rounded logits
    ref = released_loss(y, targets, mask, k=kw["num_beams"], lam=kw["lam"], xi=kw["xi"], tau=kw.get("tau", 1.0))
    ref.backward()
    return ours.detach(), x.grad, ref.detach(), y.grad


CASES = [(seed, k, lam, xi) for seed in range(6) for k, lam, xi in ((10, 0.25, 2.75), (10, 4.0, 0.25), (5, 1.0, 1.0))]


@pytest.mark.parametrize("seed, k, lam, xi", CASES)
def test_reference_equals_the_released_loss_fp32(seed, k, lam, xi):
    logits, targets, allowed, mask = random_case(seed, k)
    ours, g_ours, ref, g_ref = both(logits, targets, allowed, mask, torch.float32, num_beams=k, lam=lam, xi=xi)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed, k, lam, xi", CASES[:6])
def test_reference_equals_the_released_loss_bf16(seed, k, lam, xi):
    logits, targets, allowed, mask = random_case(seed, k)
    ours, g_ours, ref, g_ref = both(logits, targets, allowed, mask, torch.bfloat16, num_beams=k, lam=lam, xi=xi)
    assert ours.dtype == torch.float32
    assert float(ours) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    # the gradient flows back through the bf16 cast, so it is rounded to bf16 (8 bits of mantissa)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-2, atol=1e-4)


def test_tau_is_the_softmax_temperature_of_both():
    logits, targets, allowed, mask = random_case(7, 10)
    ours, g_ours, ref, g_ref = both(logits, targets, allowed, mask, torch.float32, num_beams=10, lam=1.0, xi=1.0,
                                    tau=2.0)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_the_paper_reading_differs_from_the_released_loss_only_at_short_sets():
    """`short_sets=trivial` (what `reference` computed before 2026-11-30) fails the comparison
    above whenever a branching position has 2..B-1 valid tokens, and passes without them."""
    logits, targets, allowed, mask = random_case(0, 10)
    ours, g_ours, ref, g_ref = both(logits, targets, allowed, mask, torch.float32, num_beams=10, lam=4.0, xi=0.25,
                                    short_sets="trivial")
    assert abs(float(ours) - float(ref)) > 1e-3 * float(ref)
    assert not torch.allclose(g_ours, g_ref, rtol=1e-4, atol=1e-6)
    counts = mask.sum(1)
    keep = (counts == 1) | (counts >= 10)  # no short branching positions: both readings agree
    kept = Allowed.from_lists([torch.nonzero(row)[:, 0].tolist() for row in mask[keep]])
    ours, g_ours, ref, g_ref = both(logits[keep], targets[keep], kept, mask[keep], torch.float32, num_beams=10,
                                    lam=4.0, xi=0.25, short_sets="trivial")
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)
