"""Choosing the epoch on validation so that the choice is not noise.

Each epoch's validation decode gives per-user NDCG@K on one fixed set of users, so two epochs are
compared by the per-user paired difference and its standard error
(SE = std(d_u, ddof=1) / sqrt(n)). Rules (`train.selection_rule`):
- `later_within_se` (default): the best epoch by mean NDCG@K, then the latest epoch whose mean lies
  within one paired SE of the best's. A later epoch that validation cannot tell apart from the best
  is preferred: it has trained longer, and an early near-tie is what made the old rule pick epoch 1
  on noise (issue 19).
- `max`: the best mean, the earliest on ties (the rule before 2026-11-30).
The record says whether the choice was made within noise (another epoch within one paired SE of
the chosen one) and how many validation hits it rests on; a choice on fewer than
`train.min_valid_hits` hits is flagged. Size the validation set by expected hits:
users >= min_valid_hits / (expected validation HR@K).
"""

from __future__ import annotations

import math

from bearrec.metrics import ndcg

RULES = ("later_within_se", "max")


def user_scores(preds: list[dict], k: int) -> dict[int, float]:
    """{user index: NDCG@k} of one validation decode."""
    return {p["index"]: ndcg(p["rank"], k) for p in preds}


def paired_se(a: dict[int, float], b: dict[int, float]) -> float:
    """Standard error of mean(a - b) over the users both have (0 for fewer than 2 users)."""
    diffs = [a[u] - b[u] for u in a if u in b]
    n = len(diffs)
    if n < 2:
        return 0.0
    mean = sum(diffs) / n
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)


def _mean(scores: dict[int, float]) -> float:
    return sum(scores.values()) / len(scores) if scores else 0.0


def choose_epoch(scores: dict[int, dict[int, float]], rule: str = "later_within_se") -> dict:
    """`scores`: epoch -> {user: NDCG@K}. Returns {"epoch", "best_by_mean", "rule", "within_noise",
    "nearest": the other epoch closest to the chosen one, "gap": chosen - nearest, "gap_se"}."""
    if rule not in RULES:
        raise ValueError(f"selection rule must be one of {', '.join(RULES)}, got {rule!r}")
    if not scores:
        raise ValueError("no epoch to choose from")
    epochs = sorted(scores)
    means = {e: _mean(scores[e]) for e in epochs}
    best = max(epochs, key=lambda e: (means[e], -e))  # the earliest of equal means
    chosen = best
    if rule == "later_within_se":
        chosen = max(e for e in epochs if means[best] - means[e] <= paired_se(scores[best], scores[e]))
    others = [e for e in epochs if e != chosen]
    out = {"epoch": chosen, "best_by_mean": best, "rule": rule, "within_noise": False, "nearest": None,
           "gap": None, "gap_se": None}
    if others:
        nearest = min(others, key=lambda e: (abs(means[chosen] - means[e]), -e))
        gap, se = means[chosen] - means[nearest], paired_se(scores[chosen], scores[nearest])
        out.update(nearest=nearest, gap=gap, gap_se=se, within_noise=abs(gap) <= se)
    return out
