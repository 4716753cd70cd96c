"""`beam_sim`: the paper's Objective (3.1), the expensive alternative that BEAR relaxes.

For each training instance the constrained beam search is run without gradients
(`bearrec.decoding.prefix_thresholds`); at every step t it gives theta_t, the log-probability of
the length-t prefix ranked B-th among the step's candidates (detached). With
L_t = log P(y_<=t | x) = sum_{s<=t} log p_s the gold prefix's log-probability (with gradient),

    loss = L_base + lam * (1/T) sum_t log sigmoid((theta_t - L_t) / xi)

over the T response tokens of the batch, L_base the base loss (MSL or SFT) normalised per token as
well. Minimising it lifts every gold prefix above the B-th beam of its step, which is what beam
search needs; BEAR replaces theta_t (a whole decode per instance) by the token-level beta_t of the
same forward pass. Steps with fewer than B candidates (theta_t = -inf, nothing can be pruned) and
steps after the search stopped contribute 0. The paper gives no code; this is our reading, and the
per-token normalisation matches the `paper` form of BEAR.
"""

from __future__ import annotations

import torch

from bearrec import ragged
from bearrec.losses.bear import masked_log_sigmoid


def beam_sim_parts(log_p: torch.Tensor, lengths: list[int], thresholds: torch.Tensor, *, lam: float,
                   xi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(numerator, detached denominator) of the loss above. `log_p` (T,): each response token's
    log-probability under the base softmax, examples consecutive with `lengths` tokens each;
    `thresholds` (T,): theta_t for the same positions (-inf: no constraint)."""
    if log_p.shape != thresholds.shape or sum(lengths) != len(log_p):
        raise ValueError(f"log_p {tuple(log_p.shape)}, thresholds {tuple(thresholds.shape)} and lengths summing to "
                         f"{sum(lengths)} must agree")
    if xi <= 0:
        raise ValueError(f"xi must be > 0, got {xi}")
    reg = masked_log_sigmoid(thresholds, ragged.segment_cumsum(log_p, lengths), xi)
    return (-log_p + lam * reg).sum(), torch.tensor(float(len(log_p)), device=log_p.device)


def align_thresholds(per_example: list[list[float]], lengths: list[int]) -> torch.Tensor:
    """Flatten decoder thresholds to response positions: step t of an example -> its t-th target
    token; steps the search did not reach are -inf."""
    out = []
    for steps, n in zip(per_example, lengths):
        out += list(steps[:n]) + [float("-inf")] * max(0, n - len(steps))
    return torch.tensor(out)
