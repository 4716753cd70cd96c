"""Preference losses: DPO (Rafailov et al. 2023), S-DPO (Chen et al., NeurIPS 2024) and S-DPO + BEAR.

Each training example is a group of G = 1 + N sequences: the prompt with the positive title (first)
and with N negative titles sampled from the catalogue. With log pi(y|x) the policy's sequence
log-probability (sum over the title's tokens, softmax over the vocabulary as in the S-DPO code) and
log pi_ref(y|x) the same under the starting model (computed once, cached), r_j = beta * (log pi(y_j|x)
- log pi_ref(y_j|x)):

- `sdpo`: loss = -log sigmoid(-log sum_{j>=1} exp(r_j - r_0))  (softmax DPO, log-sum-exp over negatives)
- `dpo`:  the same with N = 1, i.e. -log sigmoid(r_0 - r_1)
- `rosepo` (reconstructed, BASELINES.md): smoothed ("conservative") DPO against each negative,
  averaged over the negatives: mean_j -[(1 - eps) log sigmoid(r_0 - r_j) + eps log sigmoid(r_j - r_0)]
  (eps = 0: DPO, averaged over the negatives);
- `sdpo_bear`: sdpo + lam * (mean over the positive's tokens of log sigmoid(Delta_t / xi)
  - mean over the negatives' tokens of log sigmoid(Delta_t / xi)), Delta_t = log beta_t - log p_t
  under `bear.base`'s softmax (BEAR's Eq. 3.5 term): the positive is kept inside the top-B at every
  step and the negatives are pushed out (the paper's Fig. 7). Tokens where fewer than B are valid
  contribute 0 unless `loss.bear.short_sets: min_valid` is set.

Every loss is a mean over examples: `(numerator, denominator)` = (sum over examples, number of examples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bearrec.losses.bear import masked_log_sigmoid
from bearrec.ragged import segment_sum


def sdpo_per_example(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """(E, G) sequence log-probs, positive first -> (E,) S-DPO losses (DPO when G = 2)."""
    if policy.shape != reference.shape or policy.dim() != 2 or policy.shape[1] < 2:
        raise ValueError(f"expected (examples, 1 + negatives) log-probs with >= 1 negative, got "
                         f"{tuple(policy.shape)} and {tuple(reference.shape)}")
    r = beta * (policy - reference.to(policy.dtype))
    return -F.logsigmoid(-torch.logsumexp(r[:, 1:] - r[:, :1], dim=1))


def smoothed_dpo_per_example(policy: torch.Tensor, reference: torch.Tensor, beta: float,
                             smoothing: float) -> torch.Tensor:
    """(E, G) sequence log-probs, positive first -> (E,) smoothed-DPO losses, averaged over the G - 1
    negatives (RosePO's objective as reconstructed)."""
    if policy.shape != reference.shape or policy.dim() != 2 or policy.shape[1] < 2:
        raise ValueError(f"expected (examples, 1 + negatives) log-probs with >= 1 negative, got "
                         f"{tuple(policy.shape)} and {tuple(reference.shape)}")
    r = beta * (policy - reference.to(policy.dtype))
    margin = r[:, :1] - r[:, 1:]
    return -((1 - smoothing) * F.logsigmoid(margin) + smoothing * F.logsigmoid(-margin)).mean(dim=1)


def bear_keep_prune(log_p: torch.Tensor, log_beta: torch.Tensor, rows: torch.Tensor, group_size: int,
                    num_examples: int, xi: float) -> torch.Tensor:
    """(E,) mean over the positive's tokens of log sigmoid(Delta/xi) minus the mean over the
    negatives' tokens; `rows` is each token's sequence, sequences grouped by example (positive first)."""
    reg = masked_log_sigmoid(log_beta, log_p, xi)
    example, positive = rows // group_size, (rows % group_size) == 0
    out = []
    for mask in (positive, ~positive):
        total = segment_sum(reg[mask], example[mask], num_examples)
        count = segment_sum(torch.ones_like(reg[mask]), example[mask], num_examples)
        out.append(total / count.clamp(min=1))
    return out[0] - out[1]


def preference_parts(token_log_p: torch.Tensor, rows: torch.Tensor, reference: torch.Tensor, *, beta: float,
                     lam: float = 0.0, xi: float = 1.0, bear_log_p: torch.Tensor | None = None,
                     bear_log_beta: torch.Tensor | None = None,
                     smoothing: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_log_p` (T,) vocabulary log-probs of every response token of the E x G sequences,
    `rows` (T,) their sequence index (example-major, positive first), `reference` (E, G): S-DPO (DPO
    when G = 2). With `bear_log_p` / `bear_log_beta` (BEAR's log p_t / log beta_t of the same tokens
    under `bear.base`) the keep/prune term is added with weight `lam` (sdpo_bear). With `smoothing`:
    smoothed DPO per negative instead of S-DPO (rosepo)."""
    num_examples, group = reference.shape
    policy = segment_sum(token_log_p, rows, num_examples * group).view(num_examples, group)
    loss = (sdpo_per_example(policy, reference, beta) if smoothing is None
            else smoothed_dpo_per_example(policy, reference, beta, smoothing))
    if bear_log_p is not None:
        loss = loss + lam * bear_keep_prune(bear_log_p, bear_log_beta, rows, group, num_examples, xi)
    return loss.sum(), torch.tensor(float(num_examples), device=loss.device)
