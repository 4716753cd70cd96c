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

    def _layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column of every allowed token in the `padded` matrix."""
        rows = self.rows
        return rows, ragged.segment_offsets(self.counts, rows)

    def padded(self, logits: torch.Tensor) -> torch.Tensor:
        """(T, max count) matrix of the allowed logits, -inf where a position has fewer."""
        rows = self.rows
        return ragged.padded(logits[rows, self.tokens], self.counts, float("-inf"), ids=rows, min_width=1)

    def columns(self, targets: torch.Tensor) -> torch.Tensor | None:
        """(T,) column of each target in the `padded` matrix; None unless every target is allowed
        exactly once at its position."""
        rows, cols = self._layout()
        hit = self.tokens == targets[rows]
        if not bool((torch.bincount(rows[hit], minlength=len(self.counts)) == 1).all()):
            return None
        return cols[hit]  # position-major, so in the order of the targets


def check_inputs(logits: torch.Tensor, targets: torch.Tensor, allowed: Allowed | None) -> None:
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (T, V) and targets (T,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if allowed is not None and len(allowed.counts) != len(targets):
        raise ValueError(f"allowed sets for {len(allowed.counts)} positions, targets for {len(targets)}")
    if allowed is not None and bool((allowed.counts < 1).any()):
        raise ValueError("every response position needs at least one allowed token (the target)")


def log_probs(logits: torch.Tensor, targets: torch.Tensor, allowed: Allowed | None, tau: float = 1.0):
    """Float32 log-softmax of logits / tau, over the allowed tokens (or the whole vocabulary when
    `allowed` is None). Returns (log p of each target (T,), all candidate log-probs (T, C)).

    Over the allowed tokens only those logits are cast and scaled, and the targets' are read from
    them: no float (T, V) copy is made or kept for backward (with bf16 logits it was 4 bytes per
    token and vocabulary entry). Values and gradients are bit-identical to casting and scaling all of
    them first: the same element-wise operations on the same elements, and each target's gradient
    is the same sum of two terms."""
    check_inputs(logits, targets, allowed)
    if allowed is None:
        candidates = (logits.float() / tau).log_softmax(-1)
        return candidates.gather(1, targets[:, None])[:, 0], candidates
    candidates = allowed.padded(logits).float() / tau
    norm = torch.logsumexp(candidates, dim=1, keepdim=True)
    cols = allowed.columns(targets)
    if cols is None:  # a target outside its allowed set (never from the trie): read it from the logits
        picked = logits.gather(1, targets[:, None])[:, 0].float() / tau
    else:
        picked = candidates[torch.arange(len(targets), device=cols.device), cols]
    return picked - norm[:, 0], candidates - norm


def log_beta(candidates: torch.Tensor, num_beams: int) -> torch.Tensor:
    """log of the B-th largest candidate probability per position; -inf where fewer than B exist."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if candidates.shape[1] < num_beams:
        return torch.full(candidates.shape[:1], float("-inf"), device=candidates.device)
    return candidates.topk(num_beams, dim=1).values[:, -1]
