"""`sft`: BIGRec's language-modelling loss, token cross-entropy over the whole vocabulary."""

from bearrec.losses.allowed import log_probs
from bearrec.methods import Batch, Method


def mean_ce_parts(batch: Batch, allowed, tau: float):
    """Mean token cross-entropy, as (sum, count): over `allowed` tokens (MSL) or the vocabulary (None)."""
    import torch

    lp, _ = log_probs(batch.logits, batch.targets, allowed, tau)
    return -lp.sum(), torch.tensor(float(len(lp)), device=lp.device)


METHODS = (Method("sft", lambda b: mean_ce_parts(b, None, 1.0),
                  "token cross-entropy over the vocabulary (BIGRec)"),)
