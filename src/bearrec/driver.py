"""`bearrec run`: one experiment end to end, resumable.

Steps: train (epoch selection on validation, test decoded with the chosen checkpoint), pruning
analysis on a seeded test subset, the reference points (`bearrec.references`: popularity, the
untrained model) on the same test users, then `report.md`, `metrics.json` and plots in the run
directory.
`run.json` records the config hash and the finished steps: re-running a finished step is skipped,
a crashed run resumes from its last checkpoint, and a run directory holding another config is an
error rather than a silent mix.
"""

from __future__ import annotations

import json
from pathlib import Path

from bearrec import methods
from bearrec.atomic import atomic_write_text
from bearrec.config import Config, to_dict
from bearrec.rundir import claim, config_hash, mark


def run(cfg: Config, progress: bool = True, force: bool = False) -> Path:
    from bearrec.training import check_config, train

    check_config(cfg)
    run_dir = Path(cfg.output_dir)
    method = methods.get(cfg.loss.name)
    with claim(run_dir, cfg, force=force) as state:
        if method.train is not None:  # a conventional reference: no LLM, no trie, no pruning analysis
            if "train" not in state["done"]:
                method.train(cfg)
                mark(run_dir, "train")
            write_report(cfg, run_dir)
            return run_dir
        if "train" not in state["done"]:
            train(cfg, resume=True)
            mark(run_dir, "train")
        if cfg.analysis.pruning_users != 0 and "pruning" not in state["done"]:
            _pruning(cfg, run_dir, progress)
            mark(run_dir, "pruning")
        if cfg.analysis.references:
            from bearrec.references import run_references

            run_references(cfg, run_dir, progress)
        write_report(cfg, run_dir)
    return run_dir


PRUNING_PARTIAL = "pruning-test.partial.jsonl"  # the records of a pruning analysis still running (or cut off)


def _pruning(cfg: Config, run_dir: Path, progress: bool) -> None:
    from bearrec.analysis import PRUNING_KEYS, analyze, plot_pruning, write_pruning
    from bearrec.evaluation import append_records, read_records, seeded_subset, stored_recommendations
    from bearrec.runs import load_run

    loaded = load_run(run_dir)
    dataset, recommender = loaded.dataset, loaded.recommender
    indices = seeded_subset(len(dataset.test), cfg.analysis.pruning_users)
    # the test evaluation's own beams where it decoded these users (same model and decoding): PR@K
    # then reads exactly the lists the metrics scored, and the split is not decoded a second time
    stored = stored_recommendations(run_dir / "eval-test", indices, recommender.decode)
    # each user's record is appended as it is finished: a run cut off here resumes with the rest
    partial = run_dir / PRUNING_PARTIAL
    done = read_records(partial, PRUNING_KEYS)
    if done and progress:
        print(f"pruning analysis: {len(done)} users read back from {partial}", flush=True)
    with partial.open("a", encoding="utf-8") as out:
        result = analyze(recommender, dataset.test, indices, ks=cfg.analysis.ks, progress=progress,
                         recommendations=stored, done=done, record=lambda user: append_records(out, [user]))
    write_pruning(run_dir / "pruning-test", result)
    plot_pruning({run_dir.name: result}, run_dir / "pruning-test" / "pruning.png", ks=cfg.analysis.ks)
    partial.unlink()


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def write_report(cfg: Config, run_dir: Path) -> dict:
    """`metrics.json` (everything measured) and `report.md` (the same, readable), plus the
    validation curve `valid_curve.png`."""
    test = _read(run_dir / "eval-test" / "metrics.json")
    selection = _read(run_dir / "selection.json")
    timing = _read(run_dir / "train_metrics.json")
    pruning = _read(run_dir / "pruning-test" / "pruning.json")
    if pruning:
        pruning = {k: v for k, v in pruning.items() if k != "users"}
    last = _read(run_dir / "eval-test-last" / "metrics.json")
    if last is None and test and selection and selection.get("best") and selection["best"]["epoch"] == max(
            e["epoch"] for e in selection["epochs"]):
        last = {**test, "epoch": selection["best"]["epoch"]}  # the chosen epoch was the last one
    from bearrec.references import summarize

    summary = {"config_hash": config_hash(cfg), "dataset": cfg.data.name, "model": cfg.model.name_or_path,
               "loss": to_dict(cfg.loss), "seed": cfg.seed, "test": test, "test_last_epoch": last,
               "selection": selection, "training": timing, "pruning": pruning,
               "references": summarize(run_dir, k=max((k for k in cfg.decode.ks if k <= cfg.decode.num_beams),
                                                      default=cfg.decode.num_beams))}
    atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    if selection and selection["epochs"]:
        _plot_curve(selection, run_dir / "valid_curve.png")
    atomic_write_text(run_dir / "report.md", _markdown(summary, run_dir))
    return summary


def _plot_curve(selection: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next(k for k in selection["epochs"][0] if k.startswith("valid_ndcg"))
    epochs = sorted(selection["epochs"], key=lambda e: e["epoch"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([e["epoch"] for e in epochs], [e[key] for e in epochs], marker="o")
    ax.set_xlabel(selection.get("unit", "epoch"))
    ax.set_ylabel(key)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _choice_sentence(sel: dict) -> str:
    c = sel.get("choice")
    if not c:
        return "Chosen by the largest validation NDCG."
    unit = sel.get("unit", "epoch")
    text = f"Rule `{c['rule']}`: {unit} {c['epoch']} (best mean: {unit} {c['best_by_mean']})."
    if c["nearest"] is not None:
        text += (f" Nearest other {unit} {c['nearest']}: {c['gap']:+.4f} (paired SE {c['gap_se']:.4f})"
                 + (", within noise." if c["within_noise"] else ", outside one SE."))
    if c.get("few_valid_hits"):
        text += f" Only {sel['best'].get('hits')} validation hits (< {c['min_valid_hits']}): validate on more users."
    return text


def _markdown(s: dict, run_dir: Path) -> str:
    loss = s["loss"]
    lines = [f"# Run `{run_dir.name}`", "",
             f"- dataset: `{s['dataset']}`; model: `{s['model']}`; seed {s['seed']}; config hash `{s['config_hash']}`",
             f"- loss: {methods.get(loss['name']).description(loss)}", ""]
    refs = s.get("references")
    if refs:
        from bearrec.references import markdown, sentence

        lines += [sentence(refs, loss["name"]), "", "## Beside reference points (the same test users)", "",
                  *markdown(refs), ""]
    test = s["test"]
    if test:
        keys = list(test["item"])
        lines += [f"## Test ({test['num_users']} users, B={test['num_beams']}, "
                  f"constrained softmax {test['constrained_softmax']}, length penalty {test['length_penalty']})", "",
                  "| level | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for level in ("item", "title"):
            lines.append(f"| {level} | " + " | ".join(f"{test[level][k]:.4f}" for k in keys) + " |")
        lines.append("")
    sel = s["selection"]
    if sel and sel["epochs"]:
        key = next(k for k in sel["epochs"][0] if k.startswith("valid_ndcg"))
        unit = sel.get("unit", "epoch")  # sprec chooses among its iterations
        lines += [f"## Validation ({unit} chosen: {sel['best']['epoch']})", "", f"| {unit} | {key} | hits | users |",
                  "|---|---|---|---|"]
        lines += [f"| {e['epoch']} | {e[key]:.4f} | {e.get('hits', '')} | {e.get('users', '')} |"
                  for e in sorted(sel["epochs"], key=lambda e: e["epoch"])]
        lines += ["", _choice_sentence(sel), "", "![validation curve](valid_curve.png)", ""]
        last = s.get("test_last_epoch")
        if test and last and last.get("epoch") != sel["best"]["epoch"]:
            lines += [f"The last {unit} ({last['epoch']}) on the same test users: NDCG@10 {last['item'].get('NDCG@10', 0):.4f}, "
                      f"HR@10 {last['item'].get('HR@10', 0):.4f} (chosen {unit} {sel['best']['epoch']}: NDCG@10 "
                      f"{test['item'].get('NDCG@10', 0):.4f}).", ""]
    if s["training"]:
        t = s["training"]
        speed = (f"{t['seconds_per_epoch']:.1f} s per epoch" if t.get("seconds_per_epoch") is not None
                 else f"{t['seconds_per_iteration']:.1f} s per iteration of {t['iterations']} (negatives decoded, "
                      f"an SFT and a DPO epoch)" if t.get("seconds_per_iteration") is not None
                 else "no epoch trained in the last process")
        if t["resumed"]:
            speed += f" (resumed: the {t.get('epochs_this_process', 0):g} epoch(s) after the checkpoint)"
        steps = f"{t['global_steps']} optimiser steps, " if t.get("global_steps") is not None else ""
        lines += ["## Training", "", f"{t['num_train_examples']} examples, {steps}{speed}", ""]
    p = s["pruning"]
    if p:
        lines += [f"## Pruning ({p['num_users']} test users)", "", "| K | eligible | pruned | PR@K | violating |",
                  "|---|---|---|---|---|"]
        for key in (k for k in p if k.startswith("PR@")):
            r = p[key]
            rate = "n/a" if r["rate"] is None else f"{r['rate']:.3f}"
            share = "n/a" if r["violation_share"] is None else f"{r['violation_share']:.3f}"
            lines.append(f"| {key[3:]} | {r['eligible']} | {r['pruned']} | {rate} | {share} |")
        lines += ["", "![pruning](pruning-test/pruning.png)", ""]
    return "\n".join(lines) + "\n"
