"""The catalogue (item id <-> title) and the examples (history -> target) of a dataset."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class Example:
    """One recommendation instance: the user's `history` (oldest first) and the next item, `target`."""

    user_id: str
    history: tuple[int, ...]
    target: int
    timestamp: int


class Catalogue:
    """Item ids and their titles. Several items may share a title; all of them are kept."""

    def __init__(self, titles: dict[int, str]):
        self.titles: dict[int, str] = dict(titles)
        self.items_by_title: dict[str, list[int]] = {}
        for item_id in sorted(self.titles):
            self.items_by_title.setdefault(self.titles[item_id], []).append(item_id)

    def __len__(self) -> int:
        return len(self.titles)

    def __contains__(self, item_id: int) -> bool:
        return item_id in self.titles

    def title(self, item_id: int) -> str:
        return self.titles[item_id]

    def items_with_title(self, title: str) -> list[int]:
        return self.items_by_title.get(title, [])

    @property
    def unique_titles(self) -> list[str]:
        """Distinct titles, in the order of their smallest item id."""
        return list(self.items_by_title)

    @property
    def duplicate_titles(self) -> dict[str, list[int]]:
        return {t: ids for t, ids in self.items_by_title.items() if len(ids) > 1}


@dataclass
class Dataset:
    """A catalogue and its train / valid / test examples, plus how they were obtained."""

    name: str
    catalogue: Catalogue
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    info: dict = field(default_factory=dict)  # provenance: files, carve, dropped rows

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, valid or test")
        return getattr(self, name)

    def statistics(self) -> dict:
        rows = [*self.train, *self.valid, *self.test]
        lengths = [len(e.history) for e in rows]
        return {
            "name": self.name,
            "num_items": len(self.catalogue),
            "num_users": len({e.user_id for e in rows}),
            "num_train": len(self.train),
            "num_valid": len(self.valid),
            "num_test": len(self.test),
            "num_duplicate_titles": len(self.catalogue.duplicate_titles),
            "duplicate_titles": self.catalogue.duplicate_titles,
            "history_length": _summary(lengths),
            "test_targets_seen_in_train": _share_seen(self.train, self.test),
            "valid_targets_seen_in_train": _share_seen(self.train, self.valid),
            **self.info,
        }


def _summary(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(statistics.fmean(values), 4), "max": max(values)}


def _share_seen(train: Iterable[Example], test: list[Example]) -> float:
    seen = {e.target for e in train}
    return round(sum(e.target in seen for e in test) / len(test), 4) if test else 0.0
