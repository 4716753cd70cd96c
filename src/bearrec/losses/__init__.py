"""Fine-tuning losses: pure functions of response-position logits (T, V), target ids (T,) and the
allowed next-token sets (`Allowed`). `LOSSES[name](logits, targets, allowed, cfg)` is the dispatch
the trainer uses; `validate` rejects bad settings before any model is loaded."""

from __future__ import annotations

import torch

from bearrec.config import LossConfig
from bearrec.losses.allowed import Allowed, log_beta, log_probs
from bearrec.losses.base import msl_loss, sft_loss
from bearrec.losses.bear import FORMS, BearTerms, bear_from_terms, bear_loss, bear_terms

LOSSES = {
    "sft": lambda logits, targets, allowed, cfg: sft_loss(logits, targets),
    "msl": lambda logits, targets, allowed, cfg: msl_loss(logits, targets, allowed, cfg.tau),
    "bear": lambda logits, targets, allowed, cfg: bear_loss(
        logits, targets, allowed, base=cfg.bear.base, num_beams=cfg.bear.num_beams, lam=cfg.bear.lam,
        xi=cfg.bear.xi, form=cfg.bear.form, tau=cfg.tau),
}


def validate(cfg: LossConfig) -> None:
    if cfg.name not in LOSSES:
        raise ValueError(f"loss.name {cfg.name!r} unknown; choose one of {', '.join(LOSSES)}")
    if cfg.tau <= 0:
        raise ValueError(f"loss.tau must be > 0, got {cfg.tau}")
    b = cfg.bear
    if b.num_beams < 1:
        raise ValueError(f"loss.bear.num_beams (B) must be >= 1, got {b.num_beams}")
    if b.xi <= 0:
        raise ValueError(f"loss.bear.xi must be > 0, got {b.xi}")
    if b.lam < 0:
        raise ValueError(f"loss.bear.lam must be >= 0, got {b.lam}")


@torch.no_grad()
def condition_metrics(logits: torch.Tensor, targets: torch.Tensor, allowed: Allowed, num_beams: int,
                      constrained: bool = True) -> dict[str, float]:
    """Share of response tokens inside the top-B of their step (the necessary condition) and the
    mean pruning margin log beta - log p over positions with at least B candidates."""
    terms = bear_terms(logits, targets, allowed if constrained else None, base="msl" if constrained else "sft",
                       num_beams=num_beams)
    margin = terms.margin
    finite = torch.isfinite(margin)
    return {"inside_top_b": float(terms.inside_top_b.float().mean()),
            "mean_margin": float(margin[finite].mean()) if bool(finite.any()) else 0.0}


__all__ = ["Allowed", "BearTerms", "FORMS", "LOSSES", "bear_from_terms", "bear_loss", "bear_terms",
           "condition_metrics", "log_beta", "log_probs", "msl_loss", "sft_loss", "validate"]
