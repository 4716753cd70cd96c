"""`rosepo` (reconstructed): RosePO (Liao et al., arXiv 2410.12519; no public code) as BASELINES.md
reads it: from an SFT start, smoothed DPO of the target against each negative, averaged over the
negatives, one constant smoothing eps for every user (`loss.rosepo.smoothing`; the paper's
personalised eps needs a preference oracle we do not have), beta from `loss.pref.beta`; negatives by
strategy (`loss.rosepo.negatives`): the starting model's own best wrong title ("self", helpfulness)
and a popularity-drawn title ("popular", harmlessness against popularity bias)
(`bearrec.preference.rosepo_negatives`). Labelled `rosepo-reconstructed`."""

from bearrec.losses.allowed import log_probs
from bearrec.losses.preference import preference_parts
from bearrec.methods import Batch, Method


def _parts(batch: Batch):
    lp, _ = log_probs(batch.logits, batch.targets, None)
    return preference_parts(lp, batch.rows, batch.reference, beta=batch.cfg.pref.beta,
                            smoothing=batch.cfg.rosepo.smoothing)


def _negatives(cfg, model, encoder, rows):
    from bearrec.preference import rosepo_negatives

    r = cfg.loss.rosepo
    return rosepo_negatives(model, encoder, rows, r.negatives, r.negatives_seed, cfg.decode.batch_size)


def _describe(loss: dict) -> str:
    r = loss["rosepo"]
    return (f"`rosepo` (reconstructed RosePO: smoothed DPO, eps={r['smoothing']}, beta={loss['pref']['beta']}, "
            f"negatives {'+'.join(r['negatives'])})")


METHODS = (Method("rosepo", _parts, "RosePO (reconstructed): smoothed DPO against the SFT model's own wrong title "
                  "and a popular one (loss.rosepo.*, loss.pref.beta)",
                  sections=("pref", "rosepo"), needs=("preference",),
                  num_negatives=lambda loss: len(loss.rosepo.negatives), negatives=_negatives,
                  label=lambda loss: "rosepo-reconstructed", describe=_describe),)
