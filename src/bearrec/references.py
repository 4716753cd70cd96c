"""Reference points a fine-tuned model is read against, on exactly its test users.

- `popularity`: the same list for every user, the catalogue's titles ranked by how often their items
  are the target of the run's training rows (the rows the model was trained on); ties by the
  smallest item id. Titles shared by several items count once with the sum of their counts, as the
  decoder returns them. Under `decode.exclude_history` each user's history titles are skipped, as
  the model's decode skips them.
- `zero_shot`: the model as it was before its first optimiser step (the run's seed, its backbone
  and, with LoRA, freshly initialised adapters that leave the backbone's output unchanged), decoded
  exactly like the fine-tuned one.

Each writes `ref-<name>/` (predictions.jsonl, metrics.json) beside the run's `eval-test/`, so the
report can compare user by user (`summarize`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bearrec.config import Config
from bearrec.evaluation import Recommendation, metrics_of, prediction_record, seeded_subset, training_rows, write_outputs
from bearrec.metrics import hit, ndcg

NAMES = ("popularity", "zero_shot")
TITLES = {"popularity": "most popular training targets", "zero_shot": "untrained model (zero-shot)"}


def popularity_ranking(targets: list[int], trie, k: int) -> list[tuple[int, int]]:
    """The `k` most frequent titles among `targets`: (trie node of the title, count), most frequent
    first, ties by the title's smallest item id. Titles no target reached are not ranked."""
    counts = Counter(targets)
    scored = []
    for node, items in trie.terminal_items.items():
        total = sum(counts.get(i, 0) for i in items)
        if total > 0:
            scored.append((-total, min(items), node))
    scored.sort()
    return [(node, -neg) for neg, _, node in scored[:k]]


def popularity_predictions(cfg: Config, dataset, encoder, indices: list[int]) -> tuple[list[dict], dict]:
    """The popularity list on the test rows `indices`. With `decode.exclude_history`, as the model's
    decode there: per row, the titles of its history are skipped and the next most popular fill in."""
    train_rows = training_rows(dataset, cfg.train.max_train_examples)
    k = cfg.decode.num_beams
    catalogue, trie = encoder.catalogue, encoder.trie
    skip = cfg.decode.exclude_history
    longest = max((len(dataset.test[i].history) for i in indices), default=0) if skip else 0
    ranking = popularity_ranking([r.target for r in train_rows], trie, k + longest)

    def recommendation(ranked: list[tuple[int, int]]) -> Recommendation:
        return Recommendation([catalogue.title(trie.items_at(n)[0]) for n, _ in ranked],
                              [trie.items_at(n) for n, _ in ranked], [float(c) for _, c in ranked])

    shared = recommendation(ranking[:k])
    preds = []
    for i in indices:
        rec = shared
        if skip:  # a title is skipped when any history item has it (as the decoder's exclusion)
            seen = set(dataset.test[i].history)
            rec = recommendation([(n, c) for n, c in ranking if seen.isdisjoint(trie.items_at(n))][:k])
        preds.append(prediction_record(dataset.test[i], i, rec, catalogue))
    metrics = metrics_of(preds, cfg.decode)
    metrics["reference"] = {"name": "popularity", "train_rows": len(train_rows),
                            **({"history_excluded": True} if skip else {})}
    return preds, metrics


def zero_shot_predictions(cfg: Config, dataset, indices: list[int], progress: bool) -> tuple[list[dict], dict]:
    import torch

    from bearrec.evaluation import Recommender, evaluate
    from bearrec.training import build_encoder_and_model

    torch.manual_seed(cfg.seed)  # as training does before it builds the model: the same initial weights
    encoder, model = build_encoder_and_model(cfg, dataset)
    preds, metrics = evaluate(Recommender.for_run(model, encoder, cfg, dataset), dataset.test, indices, progress=progress)
    metrics["reference"] = {"name": "zero_shot", "model": cfg.model.name_or_path}
    return preds, metrics


def run_references(cfg: Config, run_dir: Path, progress: bool = True) -> None:
    """Write every `cfg.analysis.references` output the run directory does not hold yet."""
    from bearrec.data import load_dataset
    from bearrec.data.encode import build_encoder
    from bearrec.modeling import load_tokenizer

    todo = [n for n in cfg.analysis.references if not (run_dir / f"ref-{n}" / "metrics.json").exists()]
    if not todo or not (run_dir / "eval-test" / "predictions.jsonl").exists():
        return
    dataset = load_dataset(cfg.data)
    indices = seeded_subset(len(dataset.test), cfg.train.test_users)  # the users of eval-test/
    for name in todo:
        if name == "popularity":
            encoder = build_encoder(cfg.prompt, dataset, load_tokenizer(run_dir / "model"))
            preds, metrics = popularity_predictions(cfg, dataset, encoder, indices)
        else:
            preds, metrics = zero_shot_predictions(cfg, dataset, indices, progress)
        write_outputs(run_dir / f"ref-{name}", preds, metrics)


def _per_user(path: Path, k: int, user_ids: dict | None = None) -> dict[int, tuple[float, float]]:
    """Per test row (NDCG@k, hit@k); `user_ids`, when given, is filled with each row's user id."""
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            out[p["index"]] = (ndcg(p["rank"], k), hit(p["rank"], k))
            if user_ids is not None:
                user_ids[p["index"]] = p.get("user_id")
    return out


def summarize(run_dir: Path, k: int = 10, samples: int = 2000) -> dict | None:
    """The fine-tuned model beside each reference found in `run_dir` at cut-off `k`: users, hits,
    NDCG@k, HR@k, and the paired bootstrap interval of model - reference NDCG@k (user ids drawn, each
    with all of its rows, where the predictions record them; else rows).
    None when the run has no test predictions or no reference."""
    from bearrec.stats import user_bootstrap

    model_path = run_dir / "eval-test" / "predictions.jsonl"
    found = [n for n in NAMES if (run_dir / f"ref-{n}" / "predictions.jsonl").exists()]
    if not model_path.exists() or not found:
        return None
    user_ids: dict = {}
    model = _per_user(model_path, k, user_ids)
    clusters = None if None in user_ids.values() else user_ids  # rows of one user id are drawn together
    rows = {"model": _row(model)}
    for name in found:
        ref = _per_user(run_dir / f"ref-{name}" / "predictions.jsonl", k)
        if set(ref) != set(model):
            raise ValueError(f"{run_dir / f'ref-{name}'}: other test users than eval-test/ "
                             f"({len(ref)} vs {len(model)}); delete it and rerun `bearrec run`")
        diff = user_bootstrap({u: v[0] for u, v in model.items()}, {u: v[0] for u, v in ref.items()}, samples=samples,
                              clusters=clusters)
        rows[name] = {**_row(ref), "model_minus": {**{key: diff[key] for key in ("mean", "low", "high")},
                                                   "user_ids": diff.get("clusters")}}  # None: rows drawn one by one
    return {"k": k, "rows": rows}


def _row(per_user: dict[int, tuple[float, float]]) -> dict:
    n = len(per_user)
    hits = sum(h for _, h in per_user.values())
    return {"users": n, "hits": int(hits), "ndcg": sum(v for v, _ in per_user.values()) / n if n else 0.0,
            "hr": hits / n if n else 0.0}


def sentence(summary: dict, method: str) -> str:
    """One sentence on what the run showed: the model's hits beside each reference's, and whether
    its lead over every reference is outside the paired 95% interval."""
    k, rows = summary["k"], summary["rows"]
    m = rows["model"]
    refs = [n for n in NAMES if n in rows]
    parts = ", ".join(f"the {TITLES[n]} {'did ' if i == 0 else ''}for {rows[n]['hits']}" for i, n in enumerate(refs))
    text = (f"Fine-tuned with {method}, the model put the held-out next item in its top {k} for {m['hits']} of "
            f"{m['users']} test users (HR@{k} {m['hr']:.4f}); {parts}.")
    beaten = [n for n in refs if rows[n]["model_minus"]["low"] > 0]
    behind = [n for n in refs if rows[n]["model_minus"]["high"] < 0]
    if len(beaten) == len(refs):
        text += f" It learned: NDCG@{k} is above every reference, outside the paired 95% interval."
    elif behind:
        text += f" It did worse than the {' and the '.join(TITLES[n] for n in behind)} (paired 95% interval below 0)."
    else:
        tied = [n for n in refs if n not in beaten]
        text += (f" Its NDCG@{k} is not distinguishable from the {' and the '.join(TITLES[n] for n in tied)} "
                 f"on these users (paired 95% interval includes 0).")
    return text


def markdown(summary: dict) -> list[str]:
    k, rows = summary["k"], summary["rows"]
    ids = [r["model_minus"].get("user_ids") for r in rows.values() if r.get("model_minus")]
    drawn = f"{ids[0]} user ids drawn" if ids and ids[0] else "rows drawn one by one"
    lines = [f"| | users | hits@{k} | HR@{k} | NDCG@{k} | model - this, NDCG@{k} (95% CI, {drawn}) |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        title = "this model (chosen epoch)" if name == "model" else TITLES[name]
        d = r.get("model_minus")
        ci = f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else ""
        lines.append(f"| {title} | {r['users']} | {r['hits']} | {r['hr']:.4f} | {r['ndcg']:.4f} | {ci} |")
    return lines
