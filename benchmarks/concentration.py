"""How concentrated a run's test recommendations are: whether a model personalises or sends most users
the same few titles (docs/results.md section 26 reads BEAR's stalled seeds with it).

    python benchmarks/concentration.py runs/released/movielens-1m/{msl,bear-lam4-xi0.25}/seed={0,1}

Per run (its eval-test/predictions.jsonl; archives keep only ranks, so it needs the run itself): the
test users, the distinct titles in all top-K lists, the distinct titles ranked first, the share of users
whose first title is the most common first title, the mean number of top-K titles one of whose
item ids is already in the user's history, and NDCG@K as decoded and with those titles dropped from
the returned list (the rest moving up): a lower bound of what a search that skipped the history's
titles would reach (section 27: SmolLM2's sft fills ~4 of its top 10 with them).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

from bearrec.metrics import item_rank, summarize


def concentration(predictions: Path, k: int = 10) -> dict:
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{predictions}: no predictions")
    top = [[tuple(item) for item in r["items"][:k] if item] for r in rows]  # a title: the item ids sharing it
    first = Counter(t[0] for t in top if t)
    history = [set(r["history"]) for r in rows]
    return {"users": len(rows), f"distinct@{k}": len({i for t in top for i in t}), "distinct@1": len(first),
            "top1_share": first.most_common(1)[0][1] / len(rows) if first else 0.0,
            f"in_history@{k}": statistics.fmean(sum(any(i in h for i in title) for title in t)
                                                for h, t in zip(history, top)),
            f"ndcg@{k}": _ndcg(rows, k, lambda r, title: True),
            f"ndcg@{k}_history_dropped": _ndcg(rows, k, lambda r, title: not any(i in r["history"] for i in title))}


def _ndcg(rows: list[dict], k: int, keep) -> float:
    """Mean NDCG@k of the returned titles `keep(row, title)` leaves, in their order."""
    ranks = [item_rank([title for title in r["items"] if keep(r, title)], r["target"]) for r in rows]
    return summarize(ranks, [k])[f"NDCG@{k}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    k = args.k
    print(f"| run | users | distinct titles in the top {k} | distinct first titles | most common first title's "
          f"share | history titles in the top {k} | NDCG@{k} | NDCG@{k}, history titles dropped |\n"
          f"|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        path = run / "eval-test" / "predictions.jsonl"
        if not path.exists():
            raise SystemExit(f"{path}: missing (a finished run's test predictions; archives keep only ranks)")
        c = concentration(path, k)
        print(f"| {run} | {c['users']} | {c[f'distinct@{k}']} | {c['distinct@1']} | {c['top1_share']:.3f} | "
              f"{c[f'in_history@{k}']:.2f} | {c[f'ndcg@{k}']:.4f} | {c[f'ndcg@{k}_history_dropped']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
