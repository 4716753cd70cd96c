"""`d2lr`: dual debiasing (Lu et al., SIGIR 2025), reconstructed (no public code): SFT cross-entropy
under inverse-propensity weights from the run's training-target counts (`bearrec.losses.baselines`,
`bearrec.popularity`). Labelled `d2lr-reconstructed` until the paper's formula is confirmed."""

import torch

from bearrec.losses.baselines import d2lr_parts, d2lr_weights
from bearrec.methods import Batch, Method


def _parts(batch: Batch):
    d, counts = batch.cfg.d2lr, batch.counts
    child = counts.step(batch.nodes, batch.targets)
    ends = torch.cumsum(torch.tensor(batch.lengths), 0) - 1  # each response's EOS leads to its title's terminal
    node_counts = torch.from_numpy(counts.node_counts)
    share = None
    if d.alpha > 0:  # of the training targets through the token's prefix, the share that take the token
        share = node_counts[child] / node_counts[batch.nodes.cpu()]
    w = d2lr_weights(node_counts[child[ends]], counts.total, batch.lengths, d.beta, alpha=d.alpha, token_share=share)
    return d2lr_parts(batch.logits, batch.targets, w)


def _describe(loss: dict) -> str:
    d = loss["d2lr"]
    return (f"`d2lr` (reconstructed D2LR: example weights (N / n_y)^beta / batch mean, beta={d['beta']}; "
            f"token-level share alpha={d['alpha']}, unverified)")


METHODS = (Method("d2lr", _parts, "D2LR (reconstructed): SFT with inverse-propensity weights from training-target "
                  "counts (loss.d2lr.*)", sections=("d2lr",), needs=("target_counts",),
                  label=lambda loss: "d2lr-reconstructed", describe=_describe),)
