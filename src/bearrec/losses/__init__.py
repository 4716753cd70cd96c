"""Fine-tuning losses: pure functions of response-position logits (T, V), target ids (T,) and the
allowed next-token sets (`Allowed`), each returning a value or (numerator, denominator) parts that
the trainer adds up across processes. Which method uses which, with which settings, is declared in
`bearrec.methods` (one module per method)."""

from __future__ import annotations

import torch

from bearrec.losses.allowed import Allowed, log_beta, log_probs
from bearrec.losses.base import msl_loss, sft_loss
from bearrec.losses.beam_sim import beam_sim_parts
from bearrec.losses.bear import FORMS, SHORT_SETS, BearTerms, bear_from_terms, bear_loss, bear_parts, bear_terms
from bearrec.losses.preference import preference_parts


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


__all__ = ["Allowed", "BearTerms", "FORMS", "SHORT_SETS", "beam_sim_parts", "preference_parts",
           "bear_parts", "bear_from_terms", "bear_loss", "bear_terms", "condition_metrics", "log_beta", "log_probs",
           "msl_loss", "sft_loss"]
