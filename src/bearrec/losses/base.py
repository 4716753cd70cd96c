"""SFT (BIGRec's language-modelling loss) and MSL (masked softmax loss, Wang et al., SIGIR 2025)."""

from __future__ import annotations

import torch

from bearrec.losses.allowed import Allowed, log_probs


def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """A loss from its (numerator, denominator) parts; 0 (with a graph) when nothing is counted,
    e.g. every token forced."""
    return num / den if float(den) > 0 else num * 0.0


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, allowed: Allowed | None = None) -> torch.Tensor:
    """Mean token cross-entropy over the whole vocabulary. `allowed` is ignored."""
    lp, _ = log_probs(logits, targets, None)
    return -lp.mean()


def msl_loss(logits: torch.Tensor, targets: torch.Tensor, allowed: Allowed, tau: float = 1.0) -> torch.Tensor:
    """Mean over response tokens of -log softmax_{valid}(logits / tau)[target] (forced tokens give 0)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    lp, _ = log_probs(logits, targets, allowed, tau)
    return -lp.mean()
