"""The served model: a `Recommender` with its catalogue, how a request's history is read, the
ranked rows (exactly `bearrec recommend --json`'s), the model's identity and `/info`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ApiError(Exception):
    """A request the server refuses: HTTP `status`, the offending `field` (e.g. `history.2`, or None
    for the request as a whole), why, and extra headers (Retry-After on 503)."""

    def __init__(self, field: str | None, message: str, status: int = 422, headers: dict | None = None):
        super().__init__(message)
        self.field, self.message, self.status, self.headers = field, message, status, headers or {}


@dataclass
class ServedModel:
    """What the routes need from a loaded model. `identity` goes into every answer, `info` into /info."""

    recommender: object  # bearrec.evaluation.Recommender (or anything with `recommend(histories)`)
    catalogue: object  # bearrec.data.catalogue.Catalogue
    num_beams: int
    identity: dict
    info: dict

    def resolve(self, history: list, field: str, max_items: int) -> tuple[tuple[int, ...], frozenset[int]]:
        """(item ids for the prompt, item ids to exclude) for a history of item ids (JSON numbers) or
        exact catalogue titles (strings). A title shared by several items stands for all of them: the
        prompt holds the title once (any of its ids gives the same text), and all are excluded."""
        if not history:
            raise ApiError(field, "the history is empty: give at least one item id or title")
        if len(history) > max_items:
            raise ApiError(field, f"the history has {len(history)} items; at most {max_items} are accepted")
        ids, seen = [], set()
        for i, entry in enumerate(history):
            if isinstance(entry, str):
                items = self.catalogue.items_with_title(entry)
                if not items:
                    raise ApiError(f"{field}.{i}", f"unknown title {entry[:80]!r} (not an exact catalogue title)")
                ids.append(items[0])
                seen.update(items)
            else:
                if entry not in self.catalogue:
                    raise ApiError(f"{field}.{i}", f"unknown item id {entry} (not in the "
                                                     f"{self.identity['dataset']} catalogue)")
                ids.append(entry)
                seen.add(entry)
        return tuple(ids), frozenset(seen)

    def check_k(self, k: int | None, field: str) -> int:
        """k in 1..num_beams; None means num_beams."""
        if k is None:
            return self.num_beams
        if not 1 <= k <= self.num_beams:
            raise ApiError(field, f"k must be between 1 and num_beams ({self.num_beams}), got {k}")
        return k

    @staticmethod
    def rows(rec, k: int, exclude: frozenset[int] = frozenset()) -> list[dict]:
        """The first `k` ranks as `bearrec recommend --json` prints them (rank from 0, `items`: every
        id with the title), plus `item_id` (the smallest of them). With `exclude`, those ids are left
        out of each rank, a rank left with none is dropped and the ranks are renumbered."""
        out = []
        for r in range(len(rec.titles)):
            if len(out) == k:
                break
            items = [i for i in rec.items[r] if i not in exclude]
            if items:
                out.append({"rank": len(out), "item_id": items[0], "items": items, "title": rec.titles[r],
                            "score": rec.scores[r]})
        return out


def served_model(model_arg: str, cfg, dataset, recommender) -> ServedModel:
    """A `ServedModel` from what `bearrec.runs.load_run` returns for `--model model_arg`."""
    from dataclasses import asdict

    from bearrec.errors import BearrecError
    from bearrec.rundir import config_hash, read_state

    run = Path(model_arg)
    run_dir = str(run.resolve()) if (run / "config.yaml").exists() else None
    try:
        state = read_state(run) if run_dir else None
    except BearrecError:  # an unreadable run.json does not stop the model from being served
        state = None
    identity = {"model": model_arg, "run_dir": run_dir, "config_hash": config_hash(cfg), "dataset": dataset.name}
    catalogue = dataset.catalogue
    info = {**identity, "run_config_hash": (state or {}).get("config_hash"),
            "catalogue": {"items": len(catalogue), "titles": len(catalogue.unique_titles),
                          "duplicate_titles": len(catalogue.duplicate_titles)},
            "decode": asdict(recommender.decode), "k": {"min": 1, "max": recommender.decode.num_beams},
            "prompt": {"template": cfg.prompt.template}}
    return ServedModel(recommender, catalogue, recommender.decode.num_beams, identity, info)
