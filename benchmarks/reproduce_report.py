"""The tables of benchmarks/reproduce.py: from the finished runs under a root (or their archive) to
ROOT/summary.{md,json}, ROOT/<dataset>/table.{md,csv}, seeds.png and pruning.png. The bear lambda/xi
candidate is chosen on validation over the seeds every candidate finished; each method's row is paired
(NDCG@10, bootstrap CI) with msl and with that chosen candidate."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bearrec.analysis import plot_pruning
from bearrec.report import compare, label_runs, load_run, to_csv, to_markdown

# decoding-only rows: a method's runs decoded another way (`bearrec evaluate` into RUN/<folder>), each a
# row of its own. D3 (Bao et al. 2024): the sft runs without length normalisation. The *-softmax rows
# separate the loss from the decoder (issue 17): each model scored with the softmax its runs do not use,
# over the trie-valid tokens for sft, over the whole vocabulary for msl and bear. Base "bear": every bear-*
# candidate is decoded, the one chosen on validation is reported.
DECODED = {"d3": ("sft", ["--decoding", "d3"], "eval-test-d3"),
           "sft-valid-softmax": ("sft", ["--constrained-softmax"], "eval-test-valid-softmax"),
           "msl-vocab-softmax": ("msl", ["--no-constrained-softmax"], "eval-test-vocab-softmax"),
           "bear-vocab-softmax": ("bear", ["--no-constrained-softmax"], "eval-test-vocab-softmax")}


def _finished(root: Path, dataset: str, method: str) -> list[Path]:
    return sorted(p.parent for p in (root / dataset / method).glob("seed=*/metrics.json"))


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _valid_ndcg(run: Path) -> float | None:
    best = (_metrics(run).get("selection") or {}).get("best") or {}
    return next((v for k, v in best.items() if k.startswith("valid_ndcg")), None)


def select_candidate(candidates: dict[str, list[Path]]) -> dict[str, dict]:
    """Mean validation (and test) NDCG@10 of every lambda/xi candidate over the seeds that every
    candidate finished, so that candidates with more finished seeds are not favoured or penalised by
    the extra seeds; without a common seed, over each candidate's own seeds."""
    seeds = [{r.name: r for r in v} for v in candidates.values()]
    common = set.intersection(*(set(s) for s in seeds)) if seeds else set()
    out = {}
    for name, by_seed in zip(candidates, seeds):
        members = [by_seed[k] for k in sorted(common)] if common else list(by_seed.values())
        out[name] = {"seeds": len(members), "valid_ndcg@10": statistics.fmean(_valid_ndcg(r) or 0 for r in members),
                     "test_ndcg@10": statistics.fmean(_metrics(r)["test"]["item"]["NDCG@10"] for r in members)}
    return out


def plot_seeds(values: dict[str, list[float]], path: Path, dataset: str) -> None:
    """Test NDCG@10 of every seed (dots) and the mean (bar) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for i, (name, ys) in enumerate(sorted(values.items())):
        ax.bar(i, statistics.fmean(ys), color=f"C{i % 10}", alpha=0.35)
        ax.plot([i] * len(ys), ys, "o", color=f"C{i % 10}")
    ax.set_xticks(range(len(values)), sorted(values), fontsize=8)
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"{dataset}: each seed (dots), mean (bar)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def anchor_pairs(compared: dict[str, list[Path]], chosen: str | None) -> list[tuple[str, str]]:
    """Row-label pairs: every other method - msl, and every method but msl - the chosen bear."""
    entries = {name: [r if isinstance(r, tuple) else (r, "eval-test") for r in v] for name, v in compared.items()}
    loaded = {(str(d), e): load_run(d, e, with_ranks=False) for v in entries.values() for d, e in v}
    label_runs(list(loaded.values()))
    label = {name: loaded[(str(v[0][0]), v[0][1])]["method"] for name, v in entries.items()}
    pairs = [(label[n], label["msl"]) for n in compared if n != "msl" and "msl" in compared]
    pairs += [(label[n], label[chosen]) for n in compared if n not in ("msl", chosen) and chosen in compared]
    if "msl-vocab-softmax" in compared:  # the losses under one decoder: the softmax over the vocabulary
        pairs += [(label[n], label["msl-vocab-softmax"]) for n in ("sft", "bear-vocab-softmax") if n in compared]
    return pairs


def softmax_grid(runs: dict[str, list[Path]]) -> list[str]:
    """Markdown: per method (row name -> its runs), the mean test NDCG@10 under each softmax over the
    seeds decoded both ways (the run's eval-test and a *-softmax decode of the same users that differs
    from it in the softmax only), so the loss and the decoder read apart; [] when no run was."""
    same = ("num_users", "num_beams", "length_penalty", "ghost_threshold", "igd_alpha", "preset", "exclude_history")
    folders = sorted({f for _, _, f in DECODED.values() if f.endswith("-softmax")})
    rows = {}
    for name, members in runs.items():
        for run in members:
            own = _read_json(run / "eval-test" / "metrics.json")
            for other in (_read_json(run / f / "metrics.json") for f in folders):
                if own and other and other["constrained_softmax"] != own["constrained_softmax"] and all(
                        other.get(k) == own.get(k) for k in same):
                    pair = {m["constrained_softmax"]: m["item"]["NDCG@10"] for m in (own, other)}
                    rows.setdefault(name, []).append((pair[True], pair[False]))
                    break
    if not rows:
        return []
    lines = ["Test NDCG@10 by loss and decoder (mean over the seeds decoded both ways):", "",
             "| method | seeds | softmax over valid tokens | softmax over the vocabulary | valid - vocabulary |",
             "|---|---|---|---|---|"]
    for name, pairs in rows.items():
        valid, vocab = (statistics.fmean(x) for x in zip(*pairs))
        lines.append(f"| {name} | {len(pairs)} | {valid:.4f} | {vocab:.4f} | {valid - vocab:+.4f} |")
    return [*lines, ""]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def report(args) -> dict:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)  # absent when every run was in --archive already
    summary, lines = {}, ["# Reproduction summary", "", f"Root: `{root}`", ""]
    for dataset in args.datasets:
        names = sorted(p.name for p in (root / dataset).iterdir() if p.is_dir()) if (root / dataset).is_dir() else []
        runs = {name: _finished(root, dataset, name) for name in names}
        runs = {k: v for k, v in runs.items() if v}
        if not runs:
            continue
        candidates = {k: v for k, v in runs.items() if k.startswith("bear-")}
        selection = select_candidate(candidates)
        chosen = max(selection, key=lambda k: selection[k]["valid_ndcg@10"]) if selection else None
        compared = {k: v for k, v in runs.items() if not k.startswith("bear-") or k == chosen}
        decoded = {name: [(r, folder) for r in runs.get(chosen if base == "bear" else base, [])
                          if (r / folder / "metrics.json").exists()]
                   for name, (base, _, folder) in DECODED.items()}
        compared.update({k: v for k, v in decoded.items() if v})
        table = compare([r for v in compared.values() for r in v], bootstrap_samples=args.bootstrap,
                        pairs=anchor_pairs(compared, chosen))
        (root / dataset).mkdir(parents=True, exist_ok=True)
        (root / dataset / "table.md").write_text(to_markdown(table))
        (root / dataset / "table.csv").write_text(to_csv(table))
        details, pruning = {}, {}
        for name, members in compared.items():
            if name in DECODED:  # a decoding of the sft runs: its row is in the table above
                continue
            timing = [_metrics(r)["training"]["seconds_per_epoch"] for r in members
                      if (_metrics(r).get("training") or {}).get("seconds_per_epoch") is not None]  # sprec: none
            epochs = [((_metrics(r).get("selection") or {}).get("best") or {}).get("epoch") for r in members]
            choices = [(_metrics(r).get("selection") or {}).get("choice") or {} for r in members]
            details[name] = {"seeds": [int(r.name.split("=")[1]) for r in members],
                             "seconds_per_epoch": statistics.fmean(timing) if timing else None,
                             "chosen_epochs": epochs,
                             "test_ndcg@10": [_metrics(r)["test"]["item"]["NDCG@10"] for r in members],
                             "last_epoch_ndcg@10": [((_metrics(r).get("test_last_epoch") or {}).get("item") or {})
                                                    .get("NDCG@10") for r in members],
                             "valid_hits": [((_metrics(r).get("selection") or {}).get("best") or {}).get("hits")
                                            for r in members],
                             "within_noise": sum(bool(c.get("within_noise")) for c in choices)}
            pruned = next((r for r in members if (r / "pruning-test" / "pruning.json").exists()), None)
            if pruned:
                result = json.loads((pruned / "pruning-test" / "pruning.json").read_text())
                pruning[name] = result
                details[name]["pruning"] = {k: v for k, v in result.items() if k.startswith("PR@")}
                details[name]["pruning"]["num_users"] = result["num_users"]
                details[name]["pruning"]["run"] = str(pruned)
        plot_seeds({k: [_metrics(r)["test"]["item"]["NDCG@10"] for r in v] for k, v in compared.items()
                    if k not in DECODED},
                   root / dataset / "seeds.png", dataset)
        if pruning:
            plot_pruning(pruning, root / dataset / "pruning.png", ks=sorted(
                int(k[3:]) for k in next(iter(pruning.values())) if k.startswith("PR@")))
        summary[dataset] = {"bear_candidates": selection, "chosen_on_validation": chosen, "methods": details}
        lines += [f"## {dataset}", "", "bear lambda/xi candidates (mean over finished seeds; chosen on validation):", "",
                  "| candidate | seeds | valid NDCG@10 | test NDCG@10 |", "|---|---|---|---|"]
        lines += [f"| {k}{' (chosen)' if k == chosen else ''} | {v['seeds']} | {v['valid_ndcg@10']:.4f} | "
                  f"{v['test_ndcg@10']:.4f} |" for k, v in selection.items()]
        lines += ["", to_markdown(table), "| method | seeds | s/epoch | chosen epochs | PR@5 (eligible) | PR@10 "
                  "(eligible) | violating share of pruned @10 |", "|---|---|---|---|---|---|---|"]
        seeds_table = ["| method | test NDCG@10 per seed | last epoch's test NDCG@10 | validation hits behind the "
                       "choice | choices within one SE |", "|---|---|---|---|---|"]
        for name, d in details.items():
            show = lambda xs: ", ".join("n/a" if x is None else f"{x:.4f}" for x in xs)  # noqa: E731
            seeds_table.append(f"| {name} | {show(d['test_ndcg@10'])} | {show(d['last_epoch_ndcg@10'])} | "
                               f"{', '.join(str(h) for h in d['valid_hits'])} | {d['within_noise']} of "
                               f"{len(d['seeds'])} |")
        for name, d in details.items():
            p = d.get("pruning", {})

            def rate(k):
                r = p.get(f"PR@{k}")
                return "n/a" if not r or r["rate"] is None else f"{r['rate']:.3f} ({r['eligible']})"
            share = (p.get("PR@10") or {}).get("violation_share")
            speed = "n/a" if d["seconds_per_epoch"] is None else f"{d['seconds_per_epoch']:.1f}"
            lines.append(f"| {name} | {len(d['seeds'])} | {speed} | {d['chosen_epochs']} | "
                         f"{rate(5)} | {rate(10)} | {'n/a' if share is None else f'{share:.3f}'} |")
        lines += ["", *seeds_table, ""]
        lines += softmax_grid({name: members for name, members in compared.items() if name not in DECODED})
    summary, lines = _keep_other_datasets(root, args.datasets, summary, lines)
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def _keep_other_datasets(root: Path, datasets: list[str], summary: dict, lines: list[str]) -> tuple[dict, list[str]]:
    """A report over some datasets keeps the root summary's sections of the others (a call with
    `--datasets office` does not drop MovieLens-1M's); a dataset of this call without finished runs
    loses its old section. Those sections follow this call's, in their old order."""
    old = _read_json(root / "summary.json")
    old_md = (root / "summary.md").read_text().splitlines() if (root / "summary.md").exists() else []
    if not isinstance(old, dict):
        return summary, lines
    kept = [name for name in old if name not in datasets and f"## {name}" in old_md]
    heads = sorted(i for i, line in enumerate(old_md) if line in {f"## {name}" for name in old})
    for name in kept:
        start = old_md.index(f"## {name}")
        end = next((i for i in heads if i > start), len(old_md))
        lines += [*old_md[start:end]]
        summary[name] = old[name]
    return summary, lines
