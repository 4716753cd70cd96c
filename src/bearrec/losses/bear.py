"""BEAR: beam-search-aware regularisation (METHOD.md sections 3-4).

Per response position t, with p_t the probability of the target token under the base loss's
softmax (`msl`: over the trie-valid tokens, `sft`: over the vocabulary) and beta_t the B-th largest
such probability (detached), the pruning margin is Delta_t = log beta_t - log p_t.

Positions with fewer than B valid tokens (`short_sets`):
- `min_valid` (default; the authors' released code, which produced the published numbers): their B-th
  largest probability over the whole row is 0, and a zero threshold is replaced by the smallest
  valid probability at that position, so beta_t = min over the valid tokens of p. The reference
  weight there lies between 1 + lam/2 (target is the least likely child) and 1 + lam.
- `trivial` (the paper's reading, and this library's behaviour before 2026-11-30): the condition
  holds trivially, beta_t = 0 (log beta_t = -inf), weight 1 + lam.
Forced positions (one valid token) stay trivial under both: p_t = 1, no gradient, and the reference
form leaves them out of its normaliser as the authors' code does.
Either way the target is inside the top-B there (p_t >= min p), so `inside_top_b` and the
necessary-condition analysis do not depend on this setting. The authors compute in probability space,
so a B-th largest probability that underflows float32 (a gap of > ~103 nats) is also replaced there;
we work in log space and keep it: both give a weight of 1 + lam up to float rounding.

Forms (`form`):
- `reference` (the authors' code, default: the published lambda/xi are in its convention):
  w_t = 1 + lam * sigmoid((log p_t - log beta_t) / xi), detached;
  loss = sum_t w_t CE_t / sum_t w_t over positions with more than one valid token.
- `paper` (Eq. 3.5): L_base + lam * mean_t log sigmoid(Delta_t / xi). Normalised per response
  token, like L_base. Its per-token gradient equals the reference one when
  lam_paper = lam_reference * xi. Where beta_t = 0 the term's value is -inf with a finite limit
  gradient (-1/xi d log p_t): there it is computed as (log p_t.detach() - log p_t) / xi, value 0,
  the same gradient.
- `violators` (ours, not in the paper): L_base + lam * mean_t softplus(Delta_t / xi), whose weight
  sigmoid(Delta_t / xi) grows for tokens outside the top-B instead of those inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bearrec.losses.allowed import Allowed, log_beta, log_probs
from bearrec.losses.base import ratio

FORMS = ("reference", "paper", "violators")
SHORT_SETS = ("min_valid", "trivial")


@dataclass
class BearTerms:
    """Per-token quantities, exposed for tests and logging."""

    ce: torch.Tensor  # (T,) base cross-entropy, -log p_t
    log_p: torch.Tensor  # (T,)
    log_beta: torch.Tensor  # (T,) detached; where fewer than B candidates: log min valid p, or -inf (trivial)
    counts: torch.Tensor  # (T,) number of valid tokens (vocabulary size for sft)

    @property
    def margin(self) -> torch.Tensor:
        """Delta_t = log beta_t - log p_t (detached); -inf where the condition holds trivially."""
        return self.log_beta - self.log_p.detach()

    @property
    def inside_top_b(self) -> torch.Tensor:
        """The necessary condition per token: p_t >= beta_t."""
        return self.margin <= 0


def bear_terms(logits, targets, allowed: Allowed | None, *, base: str = "msl", num_beams: int = 10,
               tau: float = 1.0, short_sets: str = "min_valid") -> BearTerms:
    if base not in ("msl", "sft"):
        raise ValueError(f"bear base must be 'msl' or 'sft', got {base!r}")
    if short_sets not in SHORT_SETS:
        raise ValueError(f"bear short_sets must be one of {SHORT_SETS}, got {short_sets!r}")
    if base == "msl" and allowed is None:
        raise ValueError("bear with base msl needs the allowed token sets")
    lp, candidates = log_probs(logits, targets, allowed if base == "msl" else None, tau if base == "msl" else 1.0)
    candidates = candidates.detach()
    beta = log_beta(candidates, num_beams)
    counts = allowed.counts if base == "msl" else torch.full_like(targets, logits.shape[1])
    if short_sets == "min_valid":  # padding is -inf; valid log-probabilities are finite
        smallest = torch.where(torch.isneginf(candidates), torch.inf, candidates).amin(dim=1)
        beta = torch.where(torch.isneginf(beta) & (counts > 1), smallest, beta)  # forced tokens stay trivial
    return BearTerms(-lp, lp, beta, counts)


def bear_loss(logits, targets, allowed: Allowed | None, *, base: str = "msl", num_beams: int = 10, lam: float = 1.0,
              xi: float = 1.0, form: str = "reference", tau: float = 1.0, short_sets: str = "min_valid") -> torch.Tensor:
    if form not in FORMS:
        raise ValueError(f"bear form must be one of {FORMS}, got {form!r}")
    if xi <= 0:
        raise ValueError(f"xi must be > 0, got {xi}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    terms = bear_terms(logits, targets, allowed, base=base, num_beams=num_beams, tau=tau, short_sets=short_sets)
    return bear_from_terms(terms, lam=lam, xi=xi, form=form)


def bear_from_terms(terms: BearTerms, *, lam: float, xi: float, form: str) -> torch.Tensor:
    num, den = bear_parts(terms, lam=lam, xi=xi, form=form)
    return ratio(num, den)


def bear_parts(terms: BearTerms, *, lam: float, xi: float, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(numerator, detached denominator): the loss is their ratio. Several processes add up both
    before dividing, so the loss of a sharded batch equals the loss of the whole batch."""
    trivial = torch.isinf(terms.log_beta)
    if form == "reference":
        weight = 1 + lam * torch.sigmoid(-terms.margin / xi)  # sigmoid(+inf) = 1 where trivial
        w = torch.where(terms.counts > 1, weight, torch.zeros_like(weight))  # forced positions left out
        return (w * terms.ce).sum(), w.sum()
    delta = torch.where(trivial, torch.zeros_like(terms.log_p), terms.log_beta) - terms.log_p
    if form == "paper":
        reg = torch.where(trivial, (terms.log_p.detach() - terms.log_p) / xi, F.logsigmoid(delta / xi))
    else:  # violators
        reg = torch.where(trivial, torch.zeros_like(delta), F.softplus(delta / xi))
    return (terms.ce + lam * reg).sum(), torch.tensor(float(len(terms.ce)), device=terms.ce.device)


def masked_log_sigmoid(threshold: torch.Tensor, value: torch.Tensor, xi: float) -> torch.Tensor:
    """log sigmoid((threshold - value) / xi) per position, 0 (value and gradient) where the detached
    `threshold` is -inf (nothing can prune there). Shared by beam_sim and sdpo_bear."""
    active = torch.isfinite(threshold)
    delta = torch.where(active, threshold.to(value.dtype), value.detach()) - value
    return torch.where(active, F.logsigmoid(delta / xi), torch.zeros_like(value))
