"""Losses against values derived by hand (math module, no torch in the expectations)."""

import math

import pytest
import torch

from bearrec.config import BearConfig, LossConfig, PreferenceConfig, check
from bearrec.losses import Allowed, bear_loss, bear_terms, condition_metrics, msl_loss, sft_loss
from bearrec.methods import loss


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def sig(x):
    return 1 / (1 + math.exp(-x))


# Four response positions, vocabulary of 4.
#  A: target 1, valid {0,1,2}   -> with B=2, beta is p1 itself: margin 0
#  B: target 0, valid {0,1,2,3} -> beta = p1 = e/S, p0 = 1/S: margin +1 (outside the top-2)
#  C: target 3, valid {3}       -> forced: CE 0, excluded from the reference normaliser
#  D: target 1, valid {0,1}     -> fewer than B=3 valid tokens in the second check
LOGITS = [[2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
TARGETS = [1, 0, 3, 1]
SETS = [[0, 1, 2], [0, 1, 2, 3], [3], [0, 1]]
CE = [-1 + lse(2, 1, 0), -0 + lse(0, 1, 5, 0), 0.0, -0 + lse(1, 0)]


def inputs(dtype=torch.float32, requires_grad=False):
    logits = torch.tensor(LOGITS, dtype=dtype, requires_grad=requires_grad)
    return logits, torch.tensor(TARGETS), Allowed.from_lists(SETS)


def test_sft_is_full_vocabulary_cross_entropy():
    logits, targets, _ = inputs()
    expected = [-1 + lse(2, 1, 0, -1), lse(0, 1, 5, 0), lse(0, 0, 0, 0), -0 + lse(1, 0, 0, 0)]
    assert float(sft_loss(logits, targets)) == pytest.approx(sum(expected) / 4, abs=1e-6)


def test_msl_is_softmax_over_valid_tokens_only():
    logits, targets, allowed = inputs()
    assert float(msl_loss(logits, targets, allowed)) == pytest.approx(sum(CE) / 4, abs=1e-6)
    tau2 = [-0.5 + lse(1, 0.5, 0), lse(0, 0.5, 2.5, 0), 0.0, lse(0.5, 0)]
    assert float(msl_loss(logits, targets, allowed, tau=2.0)) == pytest.approx(sum(tau2) / 4, abs=1e-6)


@pytest.mark.parametrize("lam, xi", [(0.25, 2.75), (4.0, 0.25), (1.0, 1.0)])
def test_bear_reference_weighting_by_hand(lam, xi):
    logits, targets, allowed = inputs()
    w = [1 + lam * sig(0 / xi), 1 + lam * sig(-1 / xi), None, None]
    # B=2: D has exactly 2 valid tokens, beta = the smaller: p1 = 1/(e+1) -> log p - log beta = 0
    w[3] = 1 + lam * sig(0)
    expected = (w[0] * CE[0] + w[1] * CE[1] + w[3] * CE[3]) / (w[0] + w[1] + w[3])
    got = bear_loss(logits, targets, allowed, num_beams=2, lam=lam, xi=xi, form="reference")
    assert float(got) == pytest.approx(expected, abs=1e-6)
    # B=3: A: beta = p2 (3rd of 3): log p1 - log p2 = 1; B: beta = p0 (3rd of 4) = p3 -> margin 0;
    # D has 2 < 3 valid tokens. Released code (min_valid): beta = the smaller valid p, which is the
    # target's own p1 = 1/(e+1) -> weight 1 + lam * sig(0). Paper's reading (trivial): 1 + lam.
    for short_sets, w_d in (("min_valid", 1 + lam * sig(0)), ("trivial", 1 + lam)):
        w3 = [1 + lam * sig(1 / xi), 1 + lam * sig(0), w_d]
        expected3 = (w3[0] * CE[0] + w3[1] * CE[1] + w3[2] * CE[3]) / sum(w3)
        got3 = bear_loss(logits, targets, allowed, num_beams=3, lam=lam, xi=xi, form="reference", short_sets=short_sets)
        assert float(got3) == pytest.approx(expected3, abs=1e-6)


def test_short_set_threshold_is_the_smallest_valid_probability_by_hand():
    # D with target 0 instead: valid {0, 1}, logits (1, 0): p0 = e/(e+1), min p = p1 = 1/(e+1)
    logits = torch.tensor([LOGITS[3]])
    terms = bear_terms(logits, torch.tensor([0]), Allowed.from_lists([[0, 1]]), num_beams=3)
    assert float(terms.log_beta[0]) == pytest.approx(-lse(1, 0), abs=1e-6)
    assert float(terms.margin[0]) == pytest.approx(-1.0, abs=1e-6) and bool(terms.inside_top_b[0])
    trivial = bear_terms(logits, torch.tensor([0]), Allowed.from_lists([[0, 1]]), num_beams=3, short_sets="trivial")
    assert float(trivial.log_beta[0]) == -math.inf and bool(trivial.inside_top_b[0])
    lam, xi = 4.0, 0.25
    assert float(bear_loss(logits, torch.tensor([0]), Allowed.from_lists([[0, 1]]), num_beams=3, lam=lam, xi=xi)) \
        == pytest.approx(lse(1, 0) - 1, abs=1e-6)  # one position: the weight cancels in the ratio
    # paper form: log sigmoid(Delta / xi) with Delta = -1 (min_valid) instead of 0 (trivial, limit form)
    paper = bear_loss(logits, torch.tensor([0]), Allowed.from_lists([[0, 1]]), num_beams=3, lam=lam, xi=xi,
                      form="paper")
    assert float(paper) == pytest.approx(lse(1, 0) - 1 + lam * math.log(sig(-1 / xi)), abs=1e-6)


def test_bear_paper_and_violators_by_hand():
    logits, targets, allowed = inputs()
    lam, xi = 0.5, 2.0
    base = sum(CE) / 4
    # B=2: margins A 0, B +1, C trivial (1 valid token), D 0
    paper = base + lam * (math.log(sig(0)) + math.log(sig(1 / xi)) + 0.0 + math.log(sig(0))) / 4
    viol = base + lam * (math.log(2) + math.log(1 + math.exp(1 / xi)) + 0.0 + math.log(2)) / 4
    kw = dict(num_beams=2, lam=lam, xi=xi)
    assert float(bear_loss(logits, targets, allowed, form="paper", **kw)) == pytest.approx(paper, abs=1e-6)
    assert float(bear_loss(logits, targets, allowed, form="violators", **kw)) == pytest.approx(viol, abs=1e-6)
    assert float(bear_loss(logits, targets, allowed, form="paper", num_beams=2, lam=0.0, xi=xi)) == pytest.approx(base)


@pytest.mark.parametrize("num_beams", [2, 3])
@pytest.mark.parametrize("lam, xi", [(0.25, 2.75), (4.0, 0.25)])
def test_paper_and_reference_gradients_agree_per_token(num_beams, lam, xi):
    """With beta detached, d/dlogits of the paper form (lam_paper = lam * xi), times the number of
    tokens, equals that of the reference form times the sum of its weights, at every position."""
    logits_r, targets, allowed = inputs(requires_grad=True)
    logits_p = logits_r.detach().clone().requires_grad_(True)
    bear_loss(logits_r, targets, allowed, num_beams=num_beams, lam=lam, xi=xi, form="reference").backward()
    bear_loss(logits_p, targets, allowed, num_beams=num_beams, lam=lam * xi, xi=xi, form="paper").backward()
    terms = bear_terms(logits_r.detach(), targets, allowed, num_beams=num_beams)
    weights = 1 + lam * torch.sigmoid(-terms.margin / xi)
    total_w = float(weights[terms.counts > 1].sum())
    assert torch.allclose(logits_p.grad * 4, logits_r.grad * total_w, atol=1e-5)
    assert logits_r.grad.abs().sum() > 0


def test_violators_weight_grows_outside_the_top_b():
    logits, targets, allowed = inputs(requires_grad=True)
    bear_loss(logits, targets, allowed, num_beams=2, lam=1.0, xi=1.0, form="violators").backward()
    with_reg = logits.grad.clone()
    logits.grad = None
    msl_loss(logits, targets, allowed).backward()
    extra = (with_reg - logits.grad).norm(dim=1)
    assert extra[1] > extra[0] > 0  # B (outside the top-2) is pushed harder than A (at the edge)


def test_bear_with_sft_base_uses_the_whole_vocabulary():
    logits, targets, allowed = inputs()
    terms = bear_terms(logits, targets, None, base="sft", num_beams=2)
    assert terms.counts.tolist() == [4, 4, 4, 4]
    # C: all four logits tie: p = 1/4 = beta -> margin 0; A: beta = p1 itself
    assert terms.margin[0] == pytest.approx(0.0, abs=1e-6) and terms.margin[2] == pytest.approx(0.0, abs=1e-6)
    lam, xi = 1.0, 1.0
    ce = [-1 + lse(2, 1, 0, -1), lse(0, 1, 5, 0), lse(0, 0, 0, 0), lse(1, 0, 0, 0)]
    # over the vocabulary with B=2: A, C, D have the target at the 2nd place (or tied): margin 0; B: +1
    margins = [0.0, 1.0, 0.0, 0.0]
    w = [1 + lam * sig(-m / xi) for m in margins]
    expected = sum(wi * c for wi, c in zip(w, ce)) / sum(w)
    got = bear_loss(logits, targets, None, base="sft", num_beams=2, lam=lam, xi=xi)
    assert float(got) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("form", ["reference", "paper", "violators"])
def test_extreme_logits_and_single_token_sets_stay_finite(form):
    logits = torch.tensor([[1e4, -1e4, 0.0, 3.0], [-1e4, 1e4, -1e4, 0.0], [5.0, 5.0, 5.0, 5.0]], requires_grad=True)
    targets = torch.tensor([1, 0, 2])
    allowed = Allowed.from_lists([[0, 1, 3], [0, 1], [2]])
    loss = bear_loss(logits, targets, allowed, num_beams=2, lam=1.0, xi=0.25, form=form)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    only_forced = bear_loss(logits[2:], targets[2:], Allowed.from_lists([[2]]), form=form)
    assert float(only_forced.detach()) == 0.0


@pytest.mark.parametrize("name", ["sft", "msl", "bear"])
def test_bf16_inputs_match_fp32(name):
    cfg = LossConfig(name=name, bear=BearConfig(num_beams=2))
    l32 = loss(*inputs(torch.float32), cfg)
    l16 = loss(*inputs(torch.bfloat16), cfg)
    assert l16.dtype == torch.float32 and float(l16) == pytest.approx(float(l32), abs=1e-2)


def test_condition_metrics_by_hand():
    logits, targets, allowed = inputs()
    got = condition_metrics(logits, targets, allowed, num_beams=2)
    # inside the top-2: A (margin 0), C (trivial), D (margin 0); B is outside (margin 1)
    assert got["inside_top_b"] == 0.75 and got["mean_margin"] == pytest.approx(1 / 3, abs=1e-6)


@pytest.mark.parametrize("build, fragment", [
    (lambda: LossConfig(name="ppo"), "loss.name 'ppo' unknown"), (lambda: PreferenceConfig(beta=0), "loss.pref.beta"),
    (lambda: LossConfig(tau=0), "loss.tau must be > 0"), (lambda: BearConfig(num_beams=0), "loss.bear.num_beams"),
    (lambda: BearConfig(xi=0), "loss.bear.xi"), (lambda: BearConfig(lam=-1), "loss.bear.lam must be >= 0"),
    (lambda: BearConfig(short_sets="none"), "loss.bear.short_sets: 'none' is not one of"),
])
def test_bad_settings_fail_where_they_are_declared(build, fragment):
    with pytest.raises(ValueError, match=fragment):
        build()


def test_a_setting_changed_in_place_is_caught_again():
    cfg = LossConfig()
    cfg.bear.xi = 0.0
    with pytest.raises(ValueError, match="loss.bear.xi must be > 0, got 0.0"):
        check(cfg)


def test_bad_shapes():
    logits, targets, allowed = inputs()
    with pytest.raises(ValueError, match="allowed sets for 4 positions"):
        msl_loss(logits[:3], targets[:3], allowed)
    with pytest.raises(ValueError, match="needs the allowed token sets"):
        bear_loss(logits, targets, None)


# ---- beam_sim (Objective 3.1) -----------------------------------------------------------------
def test_beam_sim_value_and_gradient_by_hand():
    """Two examples (2 and 1 tokens). log p = [-1, -0.5 | -2]; prefixes L = [-1, -1.5 | -2];
    thresholds theta = [-1.2, -inf | -1]; lam 0.5, xi 2. Active terms: log sigmoid((-1.2 + 1) / 2)
    and log sigmoid((-1 + 2) / 2); the -inf step contributes 0. Loss = (3.5 + 0.5 * sum) / 3."""
    from bearrec.losses import beam_sim_parts

    log_p = torch.tensor([-1.0, -0.5, -2.0], requires_grad=True)
    theta = torch.tensor([-1.2, float("-inf"), -1.0])
    num, den = beam_sim_parts(log_p, [2, 1], theta, lam=0.5, xi=2.0)
    ls = math.log(1 / (1 + math.exp(0.1))) + math.log(1 / (1 + math.exp(-0.5)))
    assert float(num / den) == pytest.approx((3.5 + 0.5 * ls) / 3, abs=1e-6) and float(den) == 3
    (num / den).backward()
    # d/dL log sigmoid((theta - L)/xi) = -(1 - sigmoid(z)) / xi, z = (theta - L)/xi; L_t sums log p_<=t
    g1 = -(1 - 1 / (1 + math.exp(0.1))) / 2  # token 1 is in prefix 1 (active) and prefix 2 (inactive)
    g3 = -(1 - 1 / (1 + math.exp(-0.5))) / 2
    assert log_p.grad.tolist() == pytest.approx([(-1 + 0.5 * g1) / 3, -1 / 3, (-1 + 0.5 * g3) / 3], abs=1e-6)


def test_beam_sim_without_constraints_is_the_base_loss():
    from bearrec.losses import beam_sim_parts

    log_p = torch.tensor([-0.3, -0.7, -1.1])
    num, den = beam_sim_parts(log_p, [1, 2], torch.full((3,), float("-inf")), lam=3.0, xi=1.0)
    assert float(num / den) == pytest.approx(2.1 / 3)
    with pytest.raises(ValueError, match="must agree"):
        beam_sim_parts(log_p, [1, 1], torch.zeros(3), lam=1.0, xi=1.0)


def test_align_thresholds_pads_unreached_steps():
    from bearrec.losses.beam_sim import align_thresholds

    out = align_thresholds([[-1.0, -2.0, -3.0], [-0.5]], [2, 3])
    assert out[:3].tolist() == [-1.0, -2.0, -0.5] and torch.isinf(out[3:]).all()


# ---- DPO / S-DPO / S-DPO + BEAR ----------------------------------------------------------------
def test_sdpo_by_hand_and_dpo_as_one_negative():
    from bearrec.losses.preference import sdpo_per_example

    policy, ref = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -1.5, -2.5]])
    # r = 0.5 * (policy - ref) = [0.25, -0.25, -0.25]; log sum_j exp(r_j - r_0) = -0.5 + log 2
    assert float(sdpo_per_example(policy, ref, 0.5)[0]) == pytest.approx(math.log(1 + math.exp(math.log(2) - 0.5)))
    # one negative: -log sigmoid(r_0 - r_1), r_0 - r_1 = 0.5 * ((-1 + 1.5) - (-2 + 1.5)) = 0.5
    dpo = sdpo_per_example(policy[:, :2], ref[:, :2], 0.5)
    assert float(dpo[0]) == pytest.approx(math.log(1 + math.exp(-0.5)))
    with pytest.raises(ValueError, match="at least|>= 1 negative"):
        sdpo_per_example(policy[:, :1], ref[:, :1], 0.5)


def test_rosepo_smoothed_dpo_by_hand():
    """-(1 - eps) log sigmoid(m) - eps log sigmoid(-m) = softplus(-m) + eps m, per negative, averaged."""
    from bearrec.losses.preference import preference_parts, smoothed_dpo_per_example

    policy, ref = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -1.5, -1.5]])
    # r = policy - ref = [0.5, -0.5, -1.5]; margins r_0 - r_j = 1, 2
    # m = 1: softplus(-1) + 0.1 = 0.313262 + 0.1 = 0.413262; m = 2: 0.126928 + 0.2 = 0.326928; mean 0.370095
    assert float(smoothed_dpo_per_example(policy, ref, 1.0, 0.1)[0]) == pytest.approx(0.370095, abs=1e-6)
    # eps = 0 is DPO against each negative: mean of log(1 + e^-1) and log(1 + e^-2)
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
    assert float(smoothed_dpo_per_example(policy, ref, 1.0, 0.0)[0]) == pytest.approx(want)
    # conservative: the gradient in the margin, -sigmoid(-m) + eps, vanishes where sigmoid(-m) = eps
    m = torch.tensor(math.log(1 / 0.1 - 1), requires_grad=True)  # sigmoid(-m) = 0.1
    pol = torch.stack([m, torch.tensor(0.0)])[None]
    smoothed_dpo_per_example(pol, torch.zeros(1, 2), 1.0, 0.1).sum().backward()
    assert float(m.grad) == pytest.approx(0.0, abs=1e-6)
    # through preference_parts (tokens summed per sequence): the same value
    token_lp = torch.tensor([-0.4, -0.6, -2.0, -1.0, -2.0])
    rows = torch.tensor([0, 0, 1, 2, 2])
    num, den = preference_parts(token_lp, rows, ref, beta=1.0, smoothing=0.1)
    assert float(num / den) == pytest.approx(0.370095, abs=1e-6)
    with pytest.raises(ValueError, match=">= 1 negative"):
        smoothed_dpo_per_example(policy[:, :1], ref[:, :1], 1.0, 0.1)


def test_preference_parts_sum_tokens_per_sequence_and_average_examples():
    from bearrec.losses.preference import preference_parts, sdpo_per_example

    # 2 examples x (positive, 1 negative); token log-probs and their sequences (example-major)
    token_lp = torch.tensor([-0.5, -0.5, -2.0, -0.1, -0.3, -0.2], requires_grad=True)
    rows = torch.tensor([0, 0, 1, 2, 3, 3])
    ref = torch.tensor([[-1.2, -1.5], [-0.4, -0.4]])
    num, den = preference_parts(token_lp, rows, ref, beta=1.0)
    want = sdpo_per_example(torch.tensor([[-1.0, -2.0], [-0.1, -0.5]]), ref, 1.0)
    assert float(den) == 2 and float(num / den) == pytest.approx(float(want.mean()))
    (num / den).backward()
    g = token_lp.grad
    assert g[0] == g[1] < 0 and g[2] > 0  # raise the positive's tokens, lower the negative's


def test_sdpo_bear_keeps_positives_and_prunes_negatives_by_hand():
    from bearrec.losses.preference import bear_keep_prune

    # one example, G = 2: positive tokens 0, 1 (token 1 has < B candidates); negative token 2
    log_p = torch.tensor([-0.1, -0.2, -3.0], requires_grad=True)
    log_beta = torch.tensor([-1.0, float("-inf"), -1.0])
    reg = bear_keep_prune(log_p, log_beta, torch.tensor([0, 0, 1]), group_size=2, num_examples=1, xi=0.5)
    pos = math.log(1 / (1 + math.exp(-(-1.0 + 0.1) / 0.5))) / 2  # mean over both positive tokens
    neg = math.log(1 / (1 + math.exp(-(-1.0 + 3.0) / 0.5)))
    assert float(reg[0]) == pytest.approx(pos - neg, abs=1e-6)
    reg.sum().backward()
    assert log_p.grad[0] < 0 and log_p.grad[1] == 0 and log_p.grad[2] > 0


def test_allowed_select_keeps_whole_positions():
    allowed = Allowed.from_lists([[1, 2], [3], [4, 5, 6]])
    sub = allowed.select(torch.tensor([True, False, True]))
    assert sub.counts.tolist() == [2, 3] and sub.tokens.tolist() == [1, 2, 4, 5, 6]


def test_short_sets_auto_is_the_released_loss_for_reference_only():
    """auto = min_valid for bear/reference (the authors' code), trivial where no released code exists."""
    from bearrec.config import effective_short_sets

    assert effective_short_sets("bear", "reference", "auto") == "min_valid"
    assert effective_short_sets("bear", "violators", "auto") == "trivial"
    assert effective_short_sets("bear", "paper", "auto") == "trivial"
    assert effective_short_sets("sdpo_bear", "reference", "auto") == "trivial"
    assert effective_short_sets("bear", "violators", "min_valid") == "min_valid"  # explicit wins
    logits, targets, allowed = inputs()
    for form, short in (("reference", "min_valid"), ("violators", "trivial"), ("paper", "trivial")):
        cfg = LossConfig(name="bear", bear=BearConfig(num_beams=3, lam=1.0, xi=1.0, form=form))
        got = loss(logits, targets, allowed, cfg)
        want = bear_loss(logits, targets, allowed, num_beams=3, lam=1.0, xi=1.0, form=form, short_sets=short)
        other = bear_loss(logits, targets, allowed, num_beams=3, lam=1.0, xi=1.0, form=form,
                          short_sets="trivial" if short == "min_valid" else "min_valid")
        assert float(got) == pytest.approx(float(want), abs=1e-7) and float(got) != pytest.approx(float(other))


def test_a_config_without_short_sets_ran_the_old_reading():
    from bearrec.config import Config, resolved, to_dict

    old = to_dict(Config())
    del old["loss"]["bear"]["short_sets"], old["train"]["selection_rule"]
    got = resolved(old)
    assert got["loss"]["bear"]["short_sets"] == "trivial" and got["train"]["selection_rule"] == "max"
    assert resolved(to_dict(Config()))["loss"]["bear"]["short_sets"] == "min_valid"  # auto, bear/reference


def _log_probs_cast_first(logits, targets, allowed, tau):
    """log_probs as written before 2026-12: the whole (T, V) matrix cast and scaled first."""
    z = logits.float() / tau
    candidates = allowed.padded(z)
    norm = torch.logsumexp(candidates, dim=1, keepdim=True)
    return z.gather(1, targets[:, None])[:, 0] - norm[:, 0], candidates - norm


@pytest.mark.parametrize("dtype, tau", [(torch.float32, 1.0), (torch.float32, 0.7), (torch.bfloat16, 1.0),
                                        (torch.bfloat16, 0.7)])
def test_log_probs_over_allowed_tokens_is_bit_identical_to_casting_the_whole_vocabulary(dtype, tau):
    from bearrec.losses import log_probs

    gen = torch.Generator().manual_seed(0)
    vocab, n = 300, 40
    sets = [torch.randperm(vocab, generator=gen)[: int(torch.randint(1, 30, (1,), generator=gen))].tolist()
            for _ in range(n)]
    targets = torch.tensor([s[int(torch.randint(len(s), (1,), generator=gen))] for s in sets])
    allowed = Allowed.from_lists(sets)
    base = torch.randn(n, vocab, generator=gen) * 3
    results = []
    for fn in (log_probs, _log_probs_cast_first):
        logits = base.to(dtype).requires_grad_()
        lp, candidates = fn(logits, targets, allowed, tau)
        (lp * torch.linspace(-1, 2, n)).sum().backward()
        results.append((lp.detach(), candidates.detach(), logits.grad))
    for new, old in zip(*results):
        assert new.dtype == old.dtype and torch.equal(new, old)


def test_log_probs_of_a_target_outside_its_allowed_set_is_read_from_the_logits():
    from bearrec.losses import log_probs

    logits, _, allowed = inputs()
    lp, _ = log_probs(logits, torch.tensor([3, 0, 3, 1]), allowed)  # 3 is not allowed at position A
    assert float(lp[0]) == pytest.approx(-1 - lse(2, 1, 0), abs=1e-6)
    assert float(lp[1]) == pytest.approx(-CE[1], abs=1e-6)
