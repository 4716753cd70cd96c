"""Allowed next-token sets of response positions, ragged, and log-probabilities under them.

`Allowed(counts, tokens)`: position t may emit `tokens[offset_t : offset_t + counts[t]]`. Built per
batch from the trie (`Allowed.from_trie`), never stored as a dense (tokens x vocab) mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bearrec import ragged


@dataclass
class Allowed:
    counts: torch.Tensor  # (T,) number of valid next tokens per response position
    tokens: torch.Tensor  # (sum counts,) their ids, position-major

    @classmethod
    def from_trie(cls, trie, nodes: torch.Tensor) -> "Allowed":
        counts, tokens, _ = trie.children(nodes)
        return cls(counts, tokens)

    @classmethod
    def from_lists(cls, sets: list[list[int]]) -> "Allowed":
        return cls(torch.tensor([len(s) for s in sets]), torch.tensor([t for s in sets for t in s], dtype=torch.long))

    def to(self, device) -> "Allowed":
        return Allowed(self.counts.to(device), self.tokens.to(device))

    def select(self, keep: torch.Tensor) -> "Allowed":
        """The positions where the boolean `keep` is true."""
        keep = keep.to(self.counts.device)
        return Allowed(self.counts[keep], self.tokens[torch.repeat_interleave(keep, self.counts)])

    @property
    def rows(self) -> torch.Tensor:
        """The position of each allowed token."""
        return ragged.segment_ids(self.counts)

    def padded(self, logits: torch.Tensor) -> torch.Tensor:
        """(T, max count) matrix of the allowed logits, -inf where a position has fewer."""
        rows = self.rows
        return ragged.padded(logits[rows, self.tokens], self.counts, float("-inf"), ids=rows, min_width=1)


def check_inputs(logits: torch.Tensor, targets: torch.Tensor, allowed: Allowed | None) -> None:
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (T, V) and targets (T,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if allowed is not None and len(allowed.counts) != len(targets):
        raise ValueError(f"allowed sets for {len(allowed.counts)} positions, targets for {len(targets)}")
    if allowed is not None and bool((allowed.counts < 1).any()):
        raise ValueError("every response position needs at least one allowed token (the target)")


def log_probs(logits: torch.Tensor, targets: torch.Tensor, allowed: Allowed | None, tau: float = 1.0):
    """Float32 log-softmax of logits / tau, over the allowed tokens (or the whole vocabulary when
    `allowed` is None). Returns (log p of each target (T,), all candidate log-probs (T, C))."""
    check_inputs(logits, targets, allowed)
    z = logits.float() / tau
    if allowed is None:
        candidates = z.log_softmax(-1)
        return candidates.gather(1, targets[:, None])[:, 0], candidates
    candidates = allowed.padded(z)
    norm = torch.logsumexp(candidates, dim=1, keepdim=True)
    return z.gather(1, targets[:, None])[:, 0] - norm[:, 0], candidates - norm


def log_beta(candidates: torch.Tensor, num_beams: int) -> torch.Tensor:
    """log of the B-th largest candidate probability per position; -inf where fewer than B exist."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if candidates.shape[1] < num_beams:
        return torch.full(candidates.shape[:1], float("-inf"), device=candidates.device)
    return candidates.topk(num_beams, dim=1).values[:, -1]
