"""`bearrec compare`: one table across runs, paper Table 2 style.

Rows are methods, columns dataset x {NDCG, HR}@K. A row holds the runs of one dataset whose configs
are identical except for the seed (and the seed's own paths, e.g. a preference run's sft start):
a row is labelled by the method (loss name, form, base) plus every setting that differs between the
compared runs of that method (`bear (lam=4, xi=0.25)`), so different settings are never averaged,
and two runs with one label and one seed are an error naming both. Several seeds give mean +- std.
"Imp.%" is the best method's gain over the best other per column. For NDCG@10 the best row is
compared with the best other (or the `pairs` asked for) by a two-stage bootstrap: seeds, then test
users within each seed (`bearrec.stats`), so seed-to-seed variance enters the interval; the
per-seed paired differences are printed beside it; with fewer than 3 seeds per method no interval is
printed. The old interval (users only, seeds averaged per user) is printed beside it for reference.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import statistics
from pathlib import Path

import yaml

from bearrec import methods
from bearrec.config import flatten, identity
from bearrec.errors import BearrecError
from bearrec.metrics import ndcg
from bearrec.stats import hierarchical_bootstrap, user_bootstrap

METRICS = ("NDCG@5", "HR@5", "NDCG@10", "HR@10")
# never part of a label (beyond what `identity` leaves out): the seed, the pruning analysis settings
IGNORED = ("seed", "train.eval_test", "analysis.")


def method_label(cfg: dict) -> str:
    """A run's row label before settings are added: the method's own (`bear-violators`, ...)."""
    return methods.get(cfg["loss"]["name"]).row_label(cfg["loss"])


def run_settings(cfg: dict) -> dict[str, str]:
    """The settings that define what a run measures, flattened (`loss.bear.lam` -> '1.0'): all of
    the config except the seed, paths and logging, and the loss sections its method does not read.
    A string naming the run's own seed (`.../seed=3/model`) is written with `seed=*`."""
    methods.get(cfg["loss"]["name"])  # an unknown method is an error naming the known ones
    seed = f"seed={cfg['seed']}"
    out = {}
    # identity: an older run's missing keys mean what it ran with; unread loss sections and
    # settings that measure nothing are left out (the same definition as the run directory's hash)
    for key, value in flatten(identity(cfg)).items():
        if key in IGNORED or any(key.startswith(p) for p in IGNORED if p.endswith(".")):
            continue
        out[key] = value.replace(seed, "seed=*") if isinstance(value, str) else json.dumps(value)
    return out


def _short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key in `keys` shares."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if all(not other.endswith("." + short) and other != short for other in keys if other != key):
                out[key] = short
                break
        else:
            out[key] = key
    return out


def label_runs(runs: list[dict]) -> None:
    """Sets each run's `method`: its base label plus the settings that differ between the runs of
    that base label on that dataset. Raises when two runs share a label, a dataset and a seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["base"]), []).append(r)
    for members in groups.values():
        every = sorted(set().union(*(r["settings"] for r in members)))
        keys = [k for k in every if len({r["settings"].get(k) for r in members}) > 1]
        short = _short_names(every)  # unique among all settings: `bear.num_beams`, not `num_beams`
        for r in members:
            extra = ", ".join(f"{short[k]}={_show(r['settings'].get(k))}" for k in keys)
            r["method"] = f"{r['base']} ({extra})" if extra else r["base"]
    seen = {}
    for r in runs:
        key = (r["dataset"], r["method"], r["seed"])
        if key in seen:
            raise BearrecError(f"{seen[key]} and {r['dir']}: two runs of {r['method']!r} on {r['dataset']} with seed "
                               f"{r['seed']} and the same settings; compare one of them (or give one another seed)")
        seen[key] = r["dir"]


def _show(value: str | None) -> str:
    if value is None:
        return "unset"
    try:
        v = json.loads(value)
    except ValueError:
        return value
    return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def load_run(run_dir: str | Path, evaluation: str = "eval-test", with_ranks: bool = True) -> dict:
    """A run's test evaluation (`evaluation`: another folder, e.g. eval-test-d3 from `bearrec evaluate
    --decoding d3`, gives a row labelled `method [d3]`). with_ranks=False: no per-user ranks (labels
    and metrics only; predictions.jsonl is not read)."""
    run_dir = Path(run_dir)
    cfg_path, metrics_path = run_dir / "config.yaml", run_dir / evaluation / "metrics.json"
    for path in (cfg_path, metrics_path):
        if not path.exists():
            raise BearrecError(f"{path}: missing; is {run_dir} a finished run (bearrec run / train)?")
    cfg = yaml.safe_load(cfg_path.read_text())
    ranks, user_ids = {}, {}
    if with_ranks:
        for line in read_predictions(run_dir / evaluation):
            p = json.loads(line)
            ranks[p["index"]] = p["rank"]
            user_ids[p["index"]] = p.get("user_id")
    suffix = "" if evaluation in ("eval-test", *REFERENCE_ROWS) else f" [{evaluation.removeprefix('eval-test-')}]"
    igd = (cfg.get("decode") or {}).get("igd_alpha")
    if evaluation == "eval-test" and igd is not None:  # the run decodes with IGD's rule itself
        suffix = f" [igd-a{igd:g}]"
    label = method_label(cfg) + suffix
    metrics = json.loads(metrics_path.read_text())
    settings = run_settings(cfg)
    for key in DECODE_RECORDED:  # what this evaluation decoded with (another folder: not the config's)
        if key in metrics and f"decode.{key}" in settings:
            settings[f"decode.{key}"] = json.dumps(metrics[key])
    if metrics.get("exclude_history"):  # recorded only when on (`metrics_of`): off is every older run's decoding
        settings["decode.exclude_history"] = "true"
    else:
        settings.pop("decode.exclude_history", None)
    if evaluation != "eval-test":  # a preset is a recipe: its effect is in the values above (older folders
        settings.pop("decode.preset", None)  # do not record it, and the config's would be wrong there)
    return {"dir": str(run_dir), "base": label, "method": label, "dataset": cfg["data"]["name"], "seed": cfg["seed"],
            "settings": settings, "metrics": metrics["item"], "ranks": ranks,
            "user_ids": user_ids if with_ranks and None not in user_ids.values() else None}  # None: not read or
    # not recorded (archives made before they were kept)


def read_predictions(folder: Path) -> list[str]:
    """The lines of an evaluation folder's predictions.jsonl, or of the gzipped ranks an archive keeps
    in its place (`bearrec.archive`); none when there is neither."""
    if (folder / "predictions.jsonl").exists():
        return (folder / "predictions.jsonl").read_text().splitlines()
    packed = folder / "predictions.jsonl.gz"
    if packed.exists():
        try:
            return gzip.decompress(packed.read_bytes()).decode().splitlines()
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise BearrecError(f"{packed}: not a readable gzip of predictions ({e}); is it a Git LFS pointer "
                               "or cut short? Archive the run again") from None
    if (folder.parent / "archived.json").exists():
        raise BearrecError(f"{folder}: an archive without predictions.jsonl.gz; archive the run again")
    return []


# the decode settings an evaluation's metrics.json records (`bearrec.evaluation.metrics_of`)
DECODE_RECORDED = ("num_beams", "constrained_softmax", "length_penalty", "ghost_threshold", "igd_alpha")


# reference rows (`bearrec.references`, the runs' ref-<name>/ folders): the row label and whether the
# reference depends on the seed (popularity does not: one row entry per dataset)
REFERENCE_ROWS = {"ref-popularity": ("popularity", False), "ref-zero_shot": ("zero-shot (untrained model)", True)}


def load_references(run_dirs: list[str | Path]) -> list[dict]:
    """The reference rows found beside the runs: one entry per (reference, dataset, seed where it
    matters); the runs that share it must agree user by user, or it is an error naming both."""
    out: dict[tuple, dict] = {}
    for d in run_dirs:
        for folder, (label, by_seed) in REFERENCE_ROWS.items():
            if not (Path(d) / folder / "metrics.json").exists():
                continue
            r = load_run(d, folder)
            excluded = r["settings"].get("decode.exclude_history") == "true"  # a decode that skips the history
            if excluded and folder == "ref-popularity" and not _json(Path(d) / folder / "metrics.json").get(
                    "reference", {}).get("history_excluded"):
                raise BearrecError(f"{Path(d) / folder}: made before the popularity reference skipped the history "
                                   "titles under decode.exclude_history; delete it and rerun `bearrec run`")
            r["base"] = r["method"] = label + (" (history excluded)" if excluded else "")
            r["settings"] = {}
            if not by_seed:
                r["seed"] = 0
            key = (r["method"], r["dataset"], r["seed"])
            if key in out and out[key]["ranks"] != r["ranks"]:
                raise BearrecError(f"{out[key]['dir']} and {d}: their {folder}/ differ on {r['dataset']} (other data, "
                                   f"decoding or model settings); compare runs that share them")
            out.setdefault(key, r)
    return list(out.values())


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def per_user_ndcg(runs: list[dict], k: int = 10) -> dict[int, dict[int, float]]:
    """seed -> {user: NDCG@k} of one method's runs."""
    return {r["seed"]: {u: ndcg(rank, k) for u, rank in r["ranks"].items()} for r in runs}


def _seed_mean(by_seed: dict[int, dict[int, float]], users: set[int]) -> dict[int, float]:
    return {u: statistics.fmean(s[u] for s in by_seed.values()) for u in users}


def user_clusters(runs: list[dict]) -> dict | None:
    """Test row -> user id over `runs` (the predictions' `user_id`), for the bootstrap's user stage
    (`bearrec.stats`: rows of one user id are drawn together). None when a run did not record them
    (archives made before they were kept): then rows are drawn one by one. Runs that give one row two
    user ids are on different test data: an error naming both."""
    if any(r.get("user_ids") is None for r in runs):
        return None
    out, source = {}, {}
    for r in runs:
        for row, user in r["user_ids"].items():
            if out.setdefault(row, user) != user:
                raise BearrecError(f"{source[row]} and {r['dir']}: test row {row} is user {out[row]!r} in one and "
                                   f"{user!r} in the other; compare runs on the same test data")
            source.setdefault(row, r["dir"])
    return out


def difference(a_runs: list[dict], b_runs: list[dict], samples: int = 2000, seed: int = 0) -> dict:
    """NDCG@10 of method a - method b: the two-stage bootstrap (seeds, then users, drawn by user id
    where the runs recorded it), the per-seed paired differences, and the old users-only interval
    (seeds averaged per user)."""
    a, b = per_user_ndcg(a_runs), per_user_ndcg(b_runs)
    clusters = user_clusters([*a_runs, *b_runs])
    try:
        result = hierarchical_bootstrap(a, b, samples=samples, seed=seed, clusters=clusters)
    except ValueError as exc:
        return {"mean": None, "reason": str(exc)}
    users = set.intersection(*(set(s) for s in (*a.values(), *b.values())))
    result["users_only"] = user_bootstrap(_seed_mean(a, users), _seed_mean(b, users), samples=samples, seed=seed,
                                          clusters=clusters)
    if clusters is None:
        result["method"] += ", rows drawn one by one (user ids not recorded)"
    return result


def compare(run_dirs: list[str | Path], bootstrap_samples: int = 2000, evaluations: tuple[str, ...] = ("eval-test",),
            pairs: list[tuple[str, str]] = (), references: bool = False) -> dict:
    """The table's cells and, per dataset, NDCG@10 differences: best row - best other, and every
    (a, b) of `pairs` (row labels) that has runs on that dataset. `references`: also the rows of
    the runs' reference points (popularity, zero-shot) on the same test users. An entry of `run_dirs`
    may be a (run directory, evaluation folder) pair: that folder only (e.g. an sft run's eval-test-d3)."""
    runs = [load_run(*d) if isinstance(d, tuple) else load_run(d, e)
            for d in run_dirs for e in ((None,) if isinstance(d, tuple) else evaluations)]
    label_runs(runs)
    if references:
        runs += load_references([d for d in run_dirs if not isinstance(d, tuple)])
    datasets = sorted({r["dataset"] for r in runs})
    methods = sorted({r["method"] for r in runs})
    for pair in pairs:
        unknown = [m for m in pair if m not in methods]
        if unknown:
            raise BearrecError(f"pair {pair[0]!r} - {pair[1]!r}: no row {unknown[0]!r}; rows: {', '.join(methods)}")
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
                significance.setdefault(d, []).append((best_m, other_m))
        significance.setdefault(d, []).extend(  # a pair asked for replaces best - other when it is the same two
            (a, b) for a, b in pairs if (a, d) in groups and (b, d) in groups and (a, b) not in significance[d])
        asked = set(pairs)
        significance[d] = [(a, b) for a, b in significance[d] if (a, b) in asked or (b, a) not in asked]
        significance[d] = [{"a": a, "b": b, **difference(groups[(a, d)], groups[(b, d)], bootstrap_samples)}
                           for a, b in significance[d]]
    return {"runs": runs, "datasets": datasets, "methods": methods, "cells": cells, "improvement": improvement,
            "significance": {d: v for d, v in significance.items() if v}, "settings": _row_settings(runs)}


def _row_settings(runs: list[dict]) -> dict[str, dict[str, str]]:
    """Per row label, per dataset: the loss and decoding settings of its runs (one line each)."""
    out: dict[str, dict[str, str]] = {}
    for r in runs:
        keys = [k for k in r["settings"] if k.startswith(("loss.", "decode.")) and k != "loss.name"
                and k not in ("decode.ks", "decode.autocast")]
        short = _short_names(keys)
        out.setdefault(r["method"], {})[r["dataset"]] = ", ".join(f"{short[k]}={_show(r['settings'][k])}" for k in keys)
    return out


def describe_difference(dataset: str, s: dict) -> str:
    """One paragraph: the interval (or why there is none), the per-seed differences, the old interval."""
    head = f"{dataset}: NDCG@10 {s['a']} - {s['b']}"
    if s["mean"] is None:
        return f"{head}: no comparison ({s['reason']})."
    per_seed = ", ".join(f"seed {k} {v:+.4f}" for k, v in sorted(s["per_seed"].items()))
    unpaired = s["seeds"] if isinstance(s.get("seeds"), dict) else None  # the methods' seed sets differ
    if s.get("low") is None:
        means = f" (unpaired: means over {unpaired['a']} and {unpaired['b']} seeds)" if unpaired else ""
        text = f"{head} = {s['mean']:+.4f}{means}; {s.get('reason', 'no interval')}"
    else:
        seeds = f"{unpaired['a']} and {unpaired['b']}" if unpaired else s["seeds"]
        rows = f"{s['users']} test rows of {s['clusters']} user ids" if s.get("clusters") else f"{s['users']} users"
        text = (f"{head} = {s['mean']:+.4f}, 95% CI [{s['low']:+.4f}, {s['high']:+.4f}] ({s['method']}; "
                f"{seeds} seeds, {rows})")
    text += f". Per seed: {per_seed}." if per_seed else "."
    old = s.get("users_only")
    if old and old.get("low") is not None:
        by = (f", {old['clusters']} user ids drawn" if old.get("clusters")
              else ", rows drawn one by one: user ids not recorded")
        text += (f" Users-only bootstrap (seeds averaged per user, ignores seed variance{by}): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f}].")
    return text


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
    for d, diffs in result["significance"].items():
        for s in diffs:
            lines.append("\n" + describe_difference(d, s))
    lines.append("\nSettings (loss and decoding) per row:")
    for method, by_dataset in sorted(result["settings"].items()):
        values = set(by_dataset.values())
        if len(values) == 1:
            lines.append(f"- {method}: {values.pop()}")
        else:
            lines.extend(f"- {method} on {d}: {v}" for d, v in sorted(by_dataset.items()))
    return "\n".join(lines) + "\n"


def to_csv(result: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "dataset", "metric", "mean", "std", "seeds"])
    for (m, d, metric), (mean, std, n) in sorted(result["cells"].items()):
        writer.writerow([m, d, metric, f"{mean:.6f}", "" if std is None else f"{std:.6f}", n])
    return out.getvalue()
