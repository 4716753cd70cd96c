"""HR@K and NDCG@K with one relevant item per user (rank counted from 0).

HR@K = 1[rank < K]; NDCG@K = 1 / log2(rank + 2) if rank < K else 0; a target that is not
returned at all counts as a miss at every K.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def hit(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank < k else 0.0


def ndcg(rank: int | None, k: int) -> float:
    return 1.0 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


def title_rank(titles: Sequence[str], target_title: str) -> int | None:
    """The paper's exact-title match: first position whose title equals the target's."""
    for i, title in enumerate(titles):
        if title == target_title:
            return i
    return None


def item_rank(items: Sequence[Sequence[int]], target: int) -> int | None:
    """Position whose terminal holds the target item id (duplicate titles share one terminal)."""
    for i, ids in enumerate(items):
        if target in ids:
            return i
    return None


def summarize(ranks: Iterable[int | None], ks: Sequence[int]) -> dict[str, float]:
    ranks = list(ranks)
    if not ranks:
        raise ValueError("no users to summarise")
    out = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
        out[f"HR@{k}"] = sum(hit(r, k) for r in ranks) / len(ranks)
        out[f"NDCG@{k}"] = sum(ndcg(r, k) for r in ranks) / len(ranks)
    return out
