"""`bearrec compare`: one table across runs, paper Table 2 style.

Rows are methods, columns dataset x {NDCG, HR}@K. Several seeds of a method give mean +- std.
"Imp.%" is the best method's gain over the best other method per column; for NDCG@10 the best
method is compared with the best other by a paired bootstrap over test users (95% CI of the
per-user NDCG@10 difference, seeds averaged per user), which needs the same test users in both.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import statistics
from pathlib import Path

import yaml

from bearrec.errors import BearrecError
from bearrec.metrics import ndcg

METRICS = ("NDCG@5", "HR@5", "NDCG@10", "HR@10")


def method_label(cfg: dict) -> str:
    loss = cfg["loss"]
    if loss["name"] != "bear":
        return loss["name"]
    b = loss["bear"]
    form = "" if b["form"] == "reference" else f"-{b['form']}"
    base = "" if b["base"] == "msl" else f"({b['base']})"
    return f"bear{form}{base}"


def load_run(run_dir: str | Path, evaluation: str = "eval-test") -> dict:
    """A run's test evaluation (`evaluation`: another folder, e.g. eval-test-d3 from `bearrec evaluate
    --decoding d3`, gives a row labelled `method [d3]`)."""
    run_dir = Path(run_dir)
    cfg_path, metrics_path = run_dir / "config.yaml", run_dir / evaluation / "metrics.json"
    for path in (cfg_path, metrics_path):
        if not path.exists():
            raise BearrecError(f"{path}: missing; is {run_dir} a finished run (bearrec run / train)?")
    cfg = yaml.safe_load(cfg_path.read_text())
    preds = run_dir / evaluation / "predictions.jsonl"
    ranks = {}
    if preds.exists():
        for line in preds.read_text().splitlines():
            p = json.loads(line)
            ranks[p["index"]] = p["rank"]
    suffix = "" if evaluation == "eval-test" else f" [{evaluation.removeprefix('eval-test-')}]"
    return {"dir": str(run_dir), "method": method_label(cfg) + suffix, "dataset": cfg["data"]["name"], "seed": cfg["seed"],
            "metrics": json.loads(metrics_path.read_text())["item"], "ranks": ranks}


def paired_bootstrap(a: dict[int, float], b: dict[int, float], samples: int = 2000, seed: int = 0):
    """95% CI of mean(a - b) over the users both have, resampling users with replacement."""
    users = sorted(set(a) & set(b))
    if not users:
        return None
    diffs = [a[u] - b[u] for u in users]
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(samples))
    return {"mean": sum(diffs) / len(diffs), "low": means[int(0.025 * samples)],
            "high": means[int(0.975 * samples) - 1], "users": len(users)}


def _per_user_ndcg(runs: list[dict], k: int = 10) -> dict[int, float]:
    """Per-user NDCG@k averaged over a method's seeds (users present in every seed)."""
    common = set.intersection(*(set(r["ranks"]) for r in runs)) if runs else set()
    return {u: sum(ndcg(r["ranks"][u], k) for r in runs) / len(runs) for u in common}


def compare(run_dirs: list[str | Path], bootstrap_samples: int = 2000, evaluations: tuple[str, ...] = ("eval-test",)
            ) -> dict:
    runs = [load_run(d, e) for d in run_dirs for e in evaluations]
    datasets = sorted({r["dataset"] for r in runs})
    methods = sorted({r["method"] for r in runs})
    cells, groups = {}, {}
    for m in methods:
        for d in datasets:
            group = [r for r in runs if r["method"] == m and r["dataset"] == d]
            if not group:
                continue
            groups[(m, d)] = group
            for metric in METRICS:
                values = [r["metrics"][metric] for r in group if metric in r["metrics"]]
                if values:
                    cells[(m, d, metric)] = (statistics.fmean(values),
                                             statistics.stdev(values) if len(values) > 1 else None, len(values))
    improvement, significance = {}, {}
    for d in datasets:
        for metric in METRICS:
            ranked = sorted(((cells[(m, d, metric)][0], m) for m in methods if (m, d, metric) in cells), reverse=True)
            if len(ranked) < 2:
                continue
            (best, best_m), (other, other_m) = ranked[0], ranked[1]
            improvement[(d, metric)] = (best_m, 100 * (best - other) / other if other > 0 else math.inf)
            if metric == "NDCG@10":
                significance[d] = {"best": best_m, "other": other_m, **(paired_bootstrap(
                    _per_user_ndcg(groups[(best_m, d)]), _per_user_ndcg(groups[(other_m, d)]),
                    bootstrap_samples) or {"mean": None, "low": None, "high": None, "users": 0})}
    return {"runs": runs, "datasets": datasets, "methods": methods, "cells": cells, "improvement": improvement,
            "significance": significance}


def _cell(value) -> str:
    mean, std, n = value
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def to_markdown(result: dict) -> str:
    cols = [(d, m) for d in result["datasets"] for m in METRICS]
    lines = ["| method | " + " | ".join(f"{d} {m}" for d, m in cols) + " |", "|---|" + "---|" * len(cols)]
    for method in result["methods"]:
        seeds = max((result["cells"].get((method, d, m), (0, 0, 0))[2] for d, m in cols), default=0)
        row = [_cell(result["cells"][(method, d, m)]) if (method, d, m) in result["cells"] else "" for d, m in cols]
        lines.append(f"| {method} ({seeds} seed{'s' if seeds != 1 else ''}) | " + " | ".join(row) + " |")
    imp = [f"{result['improvement'][c][1]:+.2f}% ({result['improvement'][c][0]})" if c in result["improvement"]
           else "" for c in cols]
    lines.append("| Imp.% | " + " | ".join(imp) + " |")
    for d, s in result["significance"].items():
        if s["mean"] is None:
            lines.append(f"\n{d}: no test users in common between {s['best']} and {s['other']}; no bootstrap.")
        else:
            lines.append(f"\n{d}: NDCG@10 {s['best']} - {s['other']} = {s['mean']:+.4f}, paired bootstrap 95% CI "
                         f"[{s['low']:+.4f}, {s['high']:+.4f}] over {s['users']} users.")
    return "\n".join(lines) + "\n"


def to_csv(result: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "dataset", "metric", "mean", "std", "seeds"])
    for (m, d, metric), (mean, std, n) in sorted(result["cells"].items()):
        writer.writerow([m, d, metric, f"{mean:.6f}", "" if std is None else f"{std:.6f}", n])
    return out.getvalue()
