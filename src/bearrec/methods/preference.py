"""`dpo`, `sdpo`, `sdpo_bear`: preference fine-tuning from an SFT start over groups of the positive
and sampled negatives, with the starting model's cached sequence log-probs
(`bearrec.losses.preference`, `bearrec.preference`)."""

from bearrec.losses.allowed import log_probs
from bearrec.losses.preference import preference_parts
from bearrec.methods import Batch, Method


def _parts(name: str):
    def parts(batch: Batch):
        cfg = batch.cfg
        lp, _ = log_probs(batch.logits, batch.targets, None)
        bear = {}
        if name == "sdpo_bear":  # this module's own variant: S-DPO plus BEAR's keep/prune term
            from bearrec.methods.bear import terms

            t = terms(batch)
            bear = dict(lam=cfg.bear.lam, xi=cfg.bear.xi, bear_log_p=t.log_p, bear_log_beta=t.log_beta)
        return preference_parts(lp, batch.rows, batch.reference, beta=cfg.pref.beta, **bear)
    return parts


METHODS = (
    Method("dpo", _parts("dpo"), "DPO from an SFT start, one sampled negative (loss.pref.*)",
           sections=("pref",), needs=("preference",), num_negatives=lambda cfg: 1),
    Method("sdpo", _parts("sdpo"), "S-DPO from an SFT start, N sampled negatives (loss.pref.*)",
           sections=("pref",), needs=("preference",), num_negatives=lambda cfg: cfg.pref.num_negatives),
    Method("sdpo_bear", _parts("sdpo_bear"), "S-DPO plus BEAR's keep-positives / prune-negatives term",
           sections=("tau", "bear", "pref"), needs=("preference",),
           num_negatives=lambda cfg: cfg.pref.num_negatives),
)
