"""Fine-tuning losses: pure functions of response-position logits (T, V), target ids (T,) and the
allowed next-token sets (`Allowed`). `LOSSES[name](logits, targets, allowed, cfg)` gives the loss;
`LOSS_PARTS` its numerator and denominator, which the trainer adds up across processes; `validate`
rejects bad settings before any model is loaded."""

from __future__ import annotations

import torch

from bearrec.config import LossConfig, effective_short_sets
from bearrec.losses.allowed import Allowed, log_beta, log_probs
from bearrec.losses.base import msl_loss, sft_loss
from bearrec.losses.beam_sim import beam_sim_parts
from bearrec.losses.preference import PREFERENCE_LOSSES, preference_parts
from bearrec.losses.bear import FORMS, SHORT_SETS, BearTerms, bear_from_terms, bear_loss, bear_parts, bear_terms

def _mean_ce_parts(logits, targets, allowed, tau):
    lp, _ = log_probs(logits, targets, allowed, tau)
    return -lp.sum(), torch.tensor(float(len(lp)), device=lp.device)


def _short_sets(cfg: LossConfig) -> str:
    return effective_short_sets(cfg.name, cfg.bear.form, cfg.bear.short_sets)


def _bear_parts(logits, targets, allowed, cfg):
    b = cfg.bear
    terms = bear_terms(logits, targets, allowed, base=b.base, num_beams=b.num_beams, tau=cfg.tau,
                       short_sets=_short_sets(cfg))
    return bear_parts(terms, lam=b.lam, xi=b.xi, form=b.form)


# name -> fn(logits, targets, allowed, cfg) -> (numerator, detached denominator); loss = ratio
LOSS_PARTS = {
    "sft": lambda logits, targets, allowed, cfg: _mean_ce_parts(logits, targets, None, 1.0),
    "msl": lambda logits, targets, allowed, cfg: _mean_ce_parts(logits, targets, allowed, cfg.tau),
    "bear": _bear_parts,
}


def beam_sim_loss_parts(logits, targets, allowed, cfg, lengths: list[int], thresholds: torch.Tensor):
    """`beam_sim` (needs the decoder's per-step thresholds, so it is not in LOSS_PARTS)."""
    b = cfg.bear
    lp, _ = log_probs(logits, targets, allowed if b.base == "msl" else None, cfg.tau if b.base == "msl" else 1.0)
    return beam_sim_parts(lp, lengths, thresholds, lam=b.lam, xi=b.xi)


def preference_loss_parts(logits, targets, allowed, cfg, rows, reference):
    """dpo / sdpo / sdpo_bear over a batch of groups (`bearrec.losses.preference`)."""
    lp, _ = log_probs(logits, targets, None)
    bear = {}
    if cfg.name == "sdpo_bear":
        b = cfg.bear
        terms = bear_terms(logits, targets, allowed, base=b.base, num_beams=b.num_beams, tau=cfg.tau,
                           short_sets=_short_sets(cfg))
        bear = dict(lam=b.lam, xi=b.xi, bear_log_p=terms.log_p, bear_log_beta=terms.log_beta)
    return preference_parts(lp, rows, reference, name=cfg.name, beta=cfg.pref.beta, **bear)


NAMES = (*LOSS_PARTS, "beam_sim", *PREFERENCE_LOSSES)


def _ratio(parts):
    num, den = parts
    return num / den if float(den) > 0 else num * 0.0


LOSSES = {name: (lambda fn: lambda *args: _ratio(fn(*args)))(fn) for name, fn in LOSS_PARTS.items()}


def validate(cfg: LossConfig) -> None:
    if cfg.name not in NAMES:
        raise ValueError(f"loss.name {cfg.name!r} unknown; choose one of {', '.join(NAMES)}")
    if cfg.tau <= 0:
        raise ValueError(f"loss.tau must be > 0, got {cfg.tau}")
    b = cfg.bear
    if b.num_beams < 1:
        raise ValueError(f"loss.bear.num_beams (B) must be >= 1, got {b.num_beams}")
    if b.xi <= 0:
        raise ValueError(f"loss.bear.xi must be > 0, got {b.xi}")
    if b.lam < 0:
        raise ValueError(f"loss.bear.lam must be >= 0, got {b.lam}")
    if b.short_sets not in ("auto", *SHORT_SETS):
        raise ValueError(f"loss.bear.short_sets must be one of auto, {', '.join(SHORT_SETS)}, got {b.short_sets!r}")
    if cfg.pref.beta <= 0:
        raise ValueError(f"loss.pref.beta must be > 0, got {cfg.pref.beta}")
    if cfg.pref.num_negatives < 1:
        raise ValueError(f"loss.pref.num_negatives must be >= 1, got {cfg.pref.num_negatives}")


@torch.no_grad()
def condition_metrics(logits: torch.Tensor, targets: torch.Tensor, allowed: Allowed, num_beams: int) -> dict[str, float]:
    """Share of response tokens inside the top-B of the trie-valid tokens of their step (the
    necessary condition, whatever the loss) and the mean pruning margin log beta - log p over
    positions with at least B valid tokens (a token with fewer than B siblings cannot be pruned at
    its step, whatever `loss.bear.short_sets` makes the loss do there). The margin is the same under
    a softmax over the valid tokens or over the vocabulary (one normaliser cancels), so sft runs are
    measured the same way."""
    terms = bear_terms(logits, targets, allowed, base="msl", num_beams=num_beams, short_sets="trivial")
    margin = terms.margin
    finite = torch.isfinite(margin)
    return {"inside_top_b": float(terms.inside_top_b.float().mean()),
            "mean_margin": float(margin[finite].mean()) if bool(finite.any()) else 0.0}


__all__ = ["Allowed", "BearTerms", "FORMS", "SHORT_SETS", "LOSSES", "LOSS_PARTS", "NAMES", "PREFERENCE_LOSSES", "beam_sim_loss_parts",
           "beam_sim_parts", "preference_loss_parts", "preference_parts",
           "bear_parts", "bear_from_terms", "bear_loss", "bear_terms",
           "condition_metrics", "log_beta", "log_probs", "msl_loss", "sft_loss", "validate"]
