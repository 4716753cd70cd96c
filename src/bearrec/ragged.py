"""Ragged tensors: a flat `values` tensor cut into consecutive segments of sizes `counts`.

The trie's children of a batch of nodes, the allowed tokens of response positions, the candidates
of each prompt in beam search and the beams of each user in the shared-prefix cache are all stored
this way. The arithmetic on them lives here, once:

- `segment_starts(counts)`: where each segment begins in the flat tensor;
- `segment_ids(counts)`: the segment of each flat element; `segment_offsets`: its place in it;
- `padded(values, counts, fill)`: the (segments, widest) matrix view, `fill` after each segment;
- `segment_log_softmax`, `segment_cumsum`, `segment_sum`: per-segment reductions;
- `pad_sequences` / `position_ids`: Python token lists to a padded batch (left padding for the
  model, so that every sequence ends at the last column).

Functions are pure and keep the input's device. Segments may be empty; so may the whole input.
"""

from __future__ import annotations

from typing import Sequence

import torch


def segment_starts(counts: torch.Tensor) -> torch.Tensor:
    """Index of each segment's first element in the flat tensor (exclusive running sum of `counts`)."""
    return torch.cumsum(counts, 0) - counts


def segment_ids(counts: torch.Tensor) -> torch.Tensor:
    """The segment of every flat element: [0] * counts[0] + [1] * counts[1] + ..."""
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def segment_offsets(counts: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Each flat element's position within its segment (0, 1, ..., counts[s] - 1 per segment).
    `ids`: `segment_ids(counts)` when already at hand."""
    ids = segment_ids(counts) if ids is None else ids
    return torch.arange(len(ids), device=counts.device) - segment_starts(counts)[ids]


def padded_width(counts: torch.Tensor, min_width: int = 0) -> int:
    """Columns of the padded view: the largest segment, at least `min_width` (0 for no segments)."""
    return max(int(counts.max()) if len(counts) else 0, min_width)


def scatter_padded(values: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, num_segments: int, width: int,
                   fill: float) -> torch.Tensor:
    """(num_segments, width, *values.shape[1:]) filled with `fill`, element i of `values` at
    [ids[i], offsets[i]]. The building block of `padded` for callers that reuse one layout."""
    out = values.new_full((num_segments, width, *values.shape[1:]), fill)
    out[ids, offsets] = values
    return out


def padded(values: torch.Tensor, counts: torch.Tensor, fill: float, *, ids: torch.Tensor | None = None,
           min_width: int = 0) -> torch.Tensor:
    """(len(counts), widest segment) matrix: row s holds segment s left-aligned, then `fill`. Where
    `fill` cannot occur among the values (e.g. -inf before a softmax), `!= fill` is the mask of the
    real entries; `segment_offsets(counts)[:, None] < counts` is it in general. `ids`: as in
    `segment_offsets`; `min_width`: see `padded_width`."""
    ids = segment_ids(counts) if ids is None else ids
    return scatter_padded(values, ids, segment_offsets(counts, ids), len(counts), padded_width(counts, min_width),
                          fill)


def segment_log_softmax(values: torch.Tensor, counts: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """log-softmax within each segment: values - logsumexp of their segment (an empty segment has
    no entries to normalise). Computed on the -inf-padded view (one `logsumexp` over rows)."""
    ids = segment_ids(counts) if ids is None else ids
    table = padded(values, counts, float("-inf"), ids=ids)
    return values - torch.logsumexp(table, dim=1)[ids]


def segment_cumsum(values: torch.Tensor, counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Running sums along the flat tensor, restarting at each segment."""
    counts = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
    return torch.cat([v.cumsum(0) for v in values.split(counts)]) if counts else values


def segment_sum(values: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(num_segments,) sums of `values` by their segment `ids` (any order; a segment without
    elements sums to 0)."""
    return torch.zeros(num_segments, dtype=values.dtype, device=values.device).index_add(0, ids, values)


def pad_sequences(seqs: Sequence[Sequence[int]], fill: int, *, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(seqs), longest) long tensor of the sequences padded with `fill` on the left (each ends at
    the last column) or on the right, and the 0/1 long mask of the real tokens."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        out[i, cols] = torch.as_tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return out, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded batch: 0, 1, ... from each row's first real token (0 on padding)."""
    return (mask.cumsum(1) - 1).clamp(min=0)
