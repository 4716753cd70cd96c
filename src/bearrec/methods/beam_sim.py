"""`beam_sim`: the paper's Objective (3.1); every batch is first decoded without gradient for the
B-th beam's prefix log-probability per step (`bearrec.losses.beam_sim`)."""

from bearrec.losses.allowed import log_probs
from bearrec.losses.beam_sim import beam_sim_parts
from bearrec.methods import Batch, Method


def _parts(batch: Batch):
    b, msl = batch.cfg.bear, batch.cfg.bear.base == "msl"
    lp, _ = log_probs(batch.logits, batch.targets, batch.allowed if msl else None, batch.cfg.tau if msl else 1.0)
    return beam_sim_parts(lp, batch.lengths, batch.thresholds, lam=b.lam, xi=b.xi)


METHODS = (Method("beam_sim", _parts, "Objective (3.1): simulated beam search per batch (loss.bear.* apply)",
                  sections=("tau", "bear"), needs=("thresholds",)),)
