"""`igd`: IGD-Tuning, the training half of IGD (Lin et al., NeurIPS 2025): SFT cross-entropy with
weight `loss.igd.beta` on tokens whose information gain over the training-target distribution is 0
(`bearrec.losses.baselines`, `bearrec.popularity`). IGD's decoding rule (each candidate's log-prob
scaled by 1 - alpha * its normalised IG among its siblings) is a decoding setting usable with any
model: `decode.preset: igd` with `decode.igd_alpha` (`bearrec.evaluation.Recommender`). Runs are
labelled `igd-tuning`, plus `[igd-a<alpha>]` in `compare` where they decode with the rule (whole IGD)."""

import torch

from bearrec.losses.baselines import igd_parts
from bearrec.methods import Batch, Method


def _parts(batch: Batch):
    decisive = torch.from_numpy(batch.counts.decisive)[batch.counts.step(batch.nodes, batch.targets)]
    return igd_parts(batch.logits, batch.targets, decisive, beta=batch.cfg.igd.beta)


def _describe(loss: dict) -> str:
    return (f"`igd` (IGD-Tuning: CE weight beta={loss['igd']['beta']} on zero-information-gain tokens; "
            f"IGD's decoding rule only where decode.preset is igd)")


METHODS = (Method("igd", _parts, "IGD-Tuning: SFT with weight beta on zero-information-gain tokens (loss.igd.*)",
                  sections=("igd",), needs=("target_counts",), label=lambda loss: "igd-tuning",
                  describe=_describe),)
