"""`bearrec.ragged` on hand-computed values and against slow per-segment loops."""

import math
import random

import pytest
import torch

from bearrec import ragged

COUNTS = torch.tensor([2, 0, 3, 1])  # an empty segment in the middle
VALUES = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 5.0])


def test_segment_layout_by_hand():
    assert ragged.segment_starts(COUNTS).tolist() == [0, 2, 2, 5]
    assert ragged.segment_ids(COUNTS).tolist() == [0, 0, 2, 2, 2, 3]
    assert ragged.segment_offsets(COUNTS).tolist() == [0, 1, 0, 1, 2, 0]
    assert ragged.padded_width(COUNTS) == 3
    assert ragged.padded_width(torch.tensor([0, 0])) == 0
    assert ragged.padded_width(torch.tensor([0, 0]), min_width=1) == 1
    assert ragged.padded_width(torch.tensor([], dtype=torch.long), min_width=1) == 1


def test_padded_by_hand():
    inf = float("inf")
    table = ragged.padded(VALUES, COUNTS, -inf)
    assert table.tolist() == [[1.0, 2.0, -inf], [-inf, -inf, -inf], [0.0, 0.0, 0.0], [5.0, -inf, -inf]]
    assert table.dtype == VALUES.dtype
    wide = ragged.padded(torch.tensor([7, 8]), torch.tensor([1, 1]), 0, min_width=3)
    assert wide.tolist() == [[7, 0, 0], [8, 0, 0]] and wide.dtype == torch.long


def test_scatter_padded_keeps_trailing_dimensions():
    x = torch.arange(12.0).view(3, 2, 2)  # three elements of shape (2, 2)
    out = ragged.scatter_padded(x, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]), 2, 3, 0.0)
    assert out.shape == (2, 3, 2, 2)
    assert torch.equal(out[0, 0], x[0]) and torch.equal(out[0, 1], x[1]) and torch.equal(out[1, 0], x[2])
    assert not out[0, 2].any() and not out[1, 1:].any()


def test_segment_log_softmax_by_hand():
    got = ragged.segment_log_softmax(VALUES, COUNTS)
    l2 = math.log(math.exp(1.0) + math.exp(2.0))
    want = [1.0 - l2, 2.0 - l2, -math.log(3), -math.log(3), -math.log(3), 0.0]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert got[5].item() == 0.0  # a one-element segment: exactly log 1


def test_segment_cumsum_and_sum_by_hand():
    assert ragged.segment_cumsum(VALUES, [2, 0, 3, 1]).tolist() == [1.0, 3.0, 0.0, 0.0, 0.0, 5.0]
    assert ragged.segment_cumsum(torch.tensor([1.0, 2.0, 3.0]), [3]).tolist() == [1, 3, 6]
    assert ragged.segment_cumsum(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 2])).tolist() == [1.0, 2.0, 5.0]
    sums = ragged.segment_sum(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([2, 0, 2]), 4)
    assert sums.tolist() == [2.0, 0.0, 5.0, 0.0]


def test_zero_length_input():
    none = torch.zeros(0, dtype=torch.long)
    assert ragged.segment_starts(none).tolist() == ragged.segment_ids(none).tolist() == []
    assert ragged.segment_offsets(none).tolist() == []
    assert ragged.padded(torch.zeros(0), none, 0.0).shape == (0, 0)
    assert ragged.padded(torch.zeros(0), none, 0.0, min_width=1).shape == (0, 1)
    assert ragged.segment_log_softmax(torch.zeros(0), none).shape == (0,)
    empty_segments = torch.tensor([0, 0, 0])  # segments, every one empty
    assert ragged.padded(torch.zeros(0), empty_segments, -1.0).shape == (3, 0)
    assert ragged.segment_log_softmax(torch.zeros(0), empty_segments).shape == (0,)
    assert ragged.segment_cumsum(torch.zeros(0), []).shape == (0,)
    assert ragged.segment_sum(torch.zeros(0), none, 2).tolist() == [0.0, 0.0]


def _random_ragged(rng: random.Random, n: int):
    counts = torch.tensor([rng.choice([0, 1, 1, 2, 3, 7]) for _ in range(n)], dtype=torch.long)
    values = torch.randn(int(counts.sum()), generator=torch.Generator().manual_seed(rng.randint(0, 10**6))) * 4
    return counts, values


@pytest.mark.parametrize("seed", range(5))
def test_against_slow_loops(seed):
    rng = random.Random(seed)
    counts, values = _random_ragged(rng, rng.randint(1, 30))
    segments = list(values.split(counts.tolist()))
    starts, at = [], 0
    for c in counts.tolist():
        starts.append(at)
        at += c
    assert ragged.segment_starts(counts).tolist() == starts
    assert ragged.segment_ids(counts).tolist() == [s for s, c in enumerate(counts.tolist()) for _ in range(c)]
    assert ragged.segment_offsets(counts).tolist() == [j for c in counts.tolist() for j in range(c)]
    table = ragged.padded(values, counts, float("nan"), min_width=2)
    assert table.shape == (len(counts), max(2, int(counts.max())))
    for s, seg in enumerate(segments):
        assert torch.equal(table[s, :len(seg)], seg) and bool(table[s, len(seg):].isnan().all())
    slow = torch.cat([seg.log_softmax(0) for seg in segments])
    assert torch.allclose(ragged.segment_log_softmax(values, counts), slow, atol=1e-6)
    assert torch.allclose(ragged.segment_cumsum(values, counts), torch.cat([s.cumsum(0) for s in segments]))
    ids = ragged.segment_ids(counts)
    perm = torch.randperm(len(values), generator=torch.Generator().manual_seed(seed))
    sums = ragged.segment_sum(values[perm], ids[perm], len(counts))
    assert torch.allclose(sums, torch.stack([seg.sum() for seg in segments]), atol=1e-5)


def test_segment_log_softmax_is_the_padded_logsumexp_exactly():
    """The decoder's and the trie-softmax's numerics: values minus the row logsumexp of the -inf-padded view."""
    counts, values = _random_ragged(random.Random(9), 40)
    table = torch.full((len(counts), int(counts.max())), float("-inf"))
    ids = ragged.segment_ids(counts)
    table[ids, ragged.segment_offsets(counts)] = values
    assert torch.equal(ragged.segment_log_softmax(values, counts), values - torch.logsumexp(table, dim=1)[ids])


def test_pad_sequences_and_positions_by_hand():
    ids, mask = ragged.pad_sequences([[5, 6, 7], [8], []], fill=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ragged.position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]
    right, rmask = ragged.pad_sequences([(5, 6), (7,)], fill=-1, left=False)
    assert right.tolist() == [[5, 6], [7, -1]] and rmask.tolist() == [[1, 1], [1, 0]]
    assert ids.dtype == mask.dtype == torch.long
    none, none_mask = ragged.pad_sequences([], fill=0)
    assert none.shape == none_mask.shape == (0, 0)
