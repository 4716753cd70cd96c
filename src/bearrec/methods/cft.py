"""`cft`: causality-enhanced fine-tuning (Zhang et al., arXiv 2410.22809): SFT plus the cross-entropy
of the difference between the logits after the normal prompt and after the history-free one, both
with gradients, under linearly decaying token weights (`bearrec.losses.baselines`). Every step runs
a second forward pass (the history-free prompt is shorter: about 1.5-2x SFT per step)."""

from bearrec.losses.baselines import cft_parts
from bearrec.methods import Batch, Method


def _parts(batch: Batch):
    c = batch.cfg.cft
    return cft_parts(batch.logits, batch.plain_logits, batch.targets, batch.lengths, alpha=c.alpha, beta=c.beta)


def _describe(loss: dict) -> str:
    c = loss["cft"]
    return (f"`cft` (CFT: alpha={c['alpha']} on CE(z_h - z_0) with the history-free prompt, token weights "
            f"from 1 down to beta={c['beta']})")


METHODS = (Method("cft", _parts, "CFT: SFT + alpha * CE of the logits minus the history-free prompt's (loss.cft.*)",
                  sections=("cft",), needs=("plain_prompt",), describe=_describe),)
