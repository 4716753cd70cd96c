"""The paper's data protocol for raw sources (METHOD.md section 6).

Drop items without a title, clean titles, iterative k-core, per-user sliding windows of up to
`max_history` items + target, and a chronological split of the windows by target time.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from bearrec.config import PrepareConfig, to_dict
from bearrec.data.authors import write_authors_dir
from bearrec.data.catalogue import Catalogue, Example
from bearrec.data.raw import RawData

_SPACES = re.compile(r"\s+")


def clean_title(title: str) -> str:
    """Decode HTML entities, remove double quotes (they delimit titles in prompts), squeeze spaces."""
    return _SPACES.sub(" ", html.unescape(title).replace('"', "")).strip()


def k_core(interactions: list[tuple[str, str, float]], k: int) -> list[tuple[str, str, float]]:
    """Repeatedly drop users and items with fewer than k interactions until none is left."""
    current = interactions
    while True:
        users = Counter(u for u, _, _ in current)
        items = Counter(i for _, i, _ in current)
        kept = [r for r in current if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(current):
            return kept
        current = kept


def sliding_windows(sequence: list[tuple[int, float]], user: str, max_history: int, min_history: int) -> list[Example]:
    """`sequence`: (item, time) oldest first. One example per position with >= min_history items before it."""
    out = []
    for i in range(max(min_history, 1), len(sequence)):
        history = tuple(item for item, _ in sequence[max(0, i - max_history):i])
        item, ts = sequence[i]
        out.append(Example(user, history, item, int(ts)))
    return out


def chronological_split(examples: list[Example], fractions: list[float]) -> dict[str, list[Example]]:
    """Sort windows by target time (stable) and cut train/valid/test by the given fractions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split must be three non-negative fractions summing to 1, got {fractions}")
    ordered = sorted(examples, key=lambda e: e.timestamp)
    n = len(ordered)
    n_train = int(n * fractions[0])
    n_valid = int(n * fractions[1])
    return {"train": ordered[:n_train], "valid": ordered[n_train:n_train + n_valid],
            "test": ordered[n_train + n_valid:]}


def prepare(raw: RawData, settings: PrepareConfig) -> tuple[Catalogue, dict[str, list[Example]], dict]:
    titles = {item: clean_title(t) for item, t in raw.titles.items()}
    titles = {item: t for item, t in titles.items() if t}
    with_title = [r for r in raw.interactions if r[1] in titles]
    core = k_core(with_title, settings.k_core)
    raw_items = sorted({i for _, i, _ in core})
    item_id = {raw: n for n, raw in enumerate(raw_items, start=1)}
    per_user: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for user, item, ts in core:  # file order breaks timestamp ties
        per_user[user].append((item_id[item], ts))
    examples = []
    for user, seq in per_user.items():
        seq.sort(key=lambda x: x[1])
        examples.extend(sliding_windows(seq, user, settings.max_history, settings.min_history))
    splits = chronological_split(examples, settings.split)
    if not splits["train"] or not splits["test"]:
        raise ValueError(f"prepare: {raw.source} leaves {len(examples)} windows after {settings.k_core}-core, "
                         "too few for a train and a test split")
    catalogue = Catalogue({item_id[i]: titles[i] for i in raw_items})
    stats = {
        "source": raw.source,
        "settings": to_dict(settings),
        "raw_interactions": len(raw.interactions),
        "raw_items": len(raw.titles),
        "dropped_items_without_title": len(raw.titles) - len(titles),
        "dropped_interactions_without_title": len(raw.interactions) - len(with_title),
        "interactions_after_k_core": len(core),
        "users_after_k_core": len(per_user),
        "items_after_k_core": len(raw_items),
        "windows": len(examples),
        **{f"num_{k}": len(v) for k, v in splits.items()},
    }
    return catalogue, splits, {"stats": stats, "item_map": {raw: n for raw, n in item_id.items()}}


def prepare_to_dir(raw: RawData, settings: PrepareConfig, out_dir: str | Path) -> dict:
    """Run the protocol and write the authors' format plus `valid.csv`, `prepare.json` and
    `item_map.json` (raw item id -> integer id). Atomic: a failure leaves no folder behind."""
    catalogue, splits, extra = prepare(raw, settings)
    write_authors_dir(out_dir, catalogue, splits, {
        "prepare.json": json.dumps(extra["stats"], indent=2),
        "item_map.json": json.dumps(extra["item_map"], ensure_ascii=False, indent=0),
    })
    return extra["stats"]
