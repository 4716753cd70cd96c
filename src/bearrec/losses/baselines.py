"""Baselines of BEAR's Table 2 that reweight or extend SFT's cross-entropy (BASELINES.md): CFT, D2LR
(reconstructed) and IGD's training half. All are SFT-type: the softmax is over the whole vocabulary.
Pure functions of response-position logits (T, V), targets (T,) and per-token weights or flags;
examples are consecutive, `lengths` response tokens each (EOS counted). Each returns
(numerator, detached denominator), the loss being their ratio over the whole batch.

CFT (Zhang et al., arXiv 2410.22809; the authors' `train.py`): z_h are the logits after the normal
prompt, z_0 after the history-free prompt, at the same response positions (the same target token).
With t = 1..n a token's place in its response, w_t = 1 - (t - 1)(1 - beta) / (n - 1) (1 for n = 1),
no gradient:
    loss = [sum_t w_t CE(z_h)_t + alpha * sum_t w_t CE(z_h - z_0)_t] / sum_t w_t,
the sums over every response token of the batch. CE(z_h - z_0) is the cross-entropy of the
difference of the two logit vectors, with gradients through both passes.

D2LR (Lu et al., SIGIR 2025; no public code: reconstructed from the description of BEAR's first
author): each example's tokens carry w = (N / n_y)^beta / mean over the batch's examples of the same,
n_y the count of the example's target among the run's N training targets;
    loss = sum_t w_t CE_t / T,  T the number of response tokens.
The batch mean already makes the example weights average 1, as in his SASRec port (which weights
each example's loss and divides by the number of examples); dividing by T keeps SFT's token mean,
so beta = 0 is exactly sft. Dividing by sum_t w_t instead would normalise a second time and make an
example's weight depend on the other titles' lengths. `alpha` (unverified, default 0: the item-level
form above) blends in a token-level weight: w_t = (1 - alpha) w_item + alpha * w_tok, w_tok =
(1 / q_t)^beta / its mean over the batch's response tokens, q_t = the share of the training targets
through the token's prefix that also take this token (1 at forced tokens).

IGD-Tuning (Lin et al., NeurIPS 2025; the authors' `trainer.py`): weight 1 on decisive tokens
(information gain > 0, `bearrec.popularity`) and beta on the others;
    loss = sum_t w_t CE_t / sum_t w_t.
"""

from __future__ import annotations

import torch

from bearrec import ragged
from bearrec.losses.allowed import log_probs


def _lengths(lengths, total: int, device) -> torch.Tensor:
    counts = torch.as_tensor(list(lengths), dtype=torch.long, device=device)
    if int(counts.sum()) != total or bool((counts < 1).any()):
        raise ValueError(f"lengths {counts.tolist()} must be positive and add up to the {total} response tokens")
    return counts


def cft_weights(lengths, beta: float, device=None) -> torch.Tensor:
    """(T,) w_t = 1 - (t - 1)(1 - beta) / (n - 1) of each response token (1 for a one-token response)."""
    counts = torch.as_tensor(list(lengths), dtype=torch.long, device=device)
    ids = ragged.segment_ids(counts)
    place, n = ragged.segment_offsets(counts, ids).float(), counts[ids].float()
    return 1 - place * (1 - beta) / (n - 1).clamp(min=1)


def cft_parts(logits: torch.Tensor, plain_logits: torch.Tensor, targets: torch.Tensor, lengths, *, alpha: float,
              beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CFT's loss parts: `logits` z_h and `plain_logits` z_0 (T, V) at the same response positions."""
    if plain_logits.shape != logits.shape:
        raise ValueError(f"plain_logits {tuple(plain_logits.shape)} must match logits {tuple(logits.shape)}")
    _lengths(lengths, len(targets), logits.device)
    w = cft_weights(lengths, beta, logits.device)
    lp_h, _ = log_probs(logits, targets, None)
    lp_diff, _ = log_probs(logits.float() - plain_logits.float(), targets, None)
    return (w * -lp_h).sum() + alpha * (w * -lp_diff).sum(), w.sum()


def d2lr_weights(target_counts: torch.Tensor, total: int, lengths, beta: float, *, alpha: float = 0.0,
                 token_share: torch.Tensor | None = None) -> torch.Tensor:
    """(T,) D2LR weights: `target_counts` (E,) n_y of each example, `total` N; with `alpha` > 0,
    `token_share` (T,) q_t as above."""
    counts = torch.as_tensor(list(lengths), dtype=torch.long, device=target_counts.device)
    if counts.shape != target_counts.shape:
        raise ValueError(f"{len(target_counts)} target counts for {len(counts)} examples")
    ips = (total / target_counts.double()) ** beta
    w = (ips / ips.mean())[ragged.segment_ids(counts)]
    if alpha > 0:
        if token_share is None:
            raise ValueError("d2lr with alpha > 0 needs the token-level shares q_t")
        tok = (1 / token_share.double()) ** beta
        w = (1 - alpha) * w + alpha * tok / tok.mean()
    return w.float()


def d2lr_parts(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_t w_t CE_t over the vocabulary, and T."""
    lp, _ = log_probs(logits, targets, None)
    return (weights.to(lp.device) * -lp).sum(), torch.tensor(float(len(lp)), device=lp.device)


def igd_parts(logits: torch.Tensor, targets: torch.Tensor, decisive: torch.Tensor, *,
              beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """IGD-Tuning: `decisive` (T,) bool, information gain > 0 of each response token."""
    lp, _ = log_probs(logits, targets, None)
    w = torch.where(decisive.to(lp.device), torch.ones_like(lp), torch.full_like(lp, beta)).detach()
    return (w * -lp).sum(), w.sum()
