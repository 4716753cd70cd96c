"""`bear`: BEAR (SIGIR 2026), the base loss (MSL or SFT) plus the beam-search-aware regulariser,
in the authors' `reference` form, the paper's Eq. 3.5 (`paper`) or our `violators` variant
(`bearrec.losses.bear`)."""

from bearrec.config import effective_short_sets
from bearrec.losses.bear import bear_parts, bear_terms
from bearrec.methods import Batch, Method


def terms(batch: Batch):
    """BEAR's per-token terms under `loss.bear` (also used by sdpo_bear)."""
    cfg, b = batch.cfg, batch.cfg.bear
    return bear_terms(batch.logits, batch.targets, batch.allowed, base=b.base, num_beams=b.num_beams, tau=cfg.tau,
                      short_sets=effective_short_sets(cfg.name, b.form, b.short_sets))


def _parts(batch: Batch):
    b = batch.cfg.bear
    return bear_parts(terms(batch), lam=b.lam, xi=b.xi, form=b.form)


def _label(loss: dict) -> str:
    b = loss["bear"]
    form = "" if b["form"] == "reference" else f"-{b['form']}"
    base = "" if b["base"] == "msl" else f"({b['base']})"
    return f"bear{form}{base}"


def _describe(loss: dict) -> str:
    b = loss["bear"]
    return (f"`bear` (base {b['base']}, B={b['num_beams']}, lam={b['lam']}, xi={b['xi']}, form {b['form']}, "
            f"short sets {b.get('short_sets', 'trivial')})")


METHODS = (Method("bear", _parts, "base loss + the beam-search-aware regulariser (loss.bear.*)",
                  sections=("tau", "bear"), label=_label, describe=_describe,
                  short_sets_auto=lambda form: "min_valid" if form == "reference" else "trivial"),)
