"""`sprec`: SPRec (Gao et al., WWW 2025, arXiv 2412.09243; code github.com/RegionCh/SPRec), self-play
from an SFT start, as BASELINES.md reads it. Iteration k of `loss.sprec.iterations`:
1. samples `loss.sprec.rows_per_iteration` training rows (seeded by the run's seed and k);
2. decodes one title per row with the iteration's starting model: constrained greedy (B = 1), where
   the authors decode unconstrained greedy, so that the rejected response is a catalogue title. Rows
   whose decoded title is the target's stay (their DPO gradient is zero; the authors keep them too);
3. trains one SFT epoch on those rows: `RUN/iter-k/sft`, a plain `sft` run;
4. trains one DPO epoch on those rows against their negatives, the reference being the model right
   after step 3: `RUN/iter-k/dpo`, a plain `dpo` run with beta `loss.sprec.beta`, whose validation
   decode scores the iteration.
Both steps use train.learning_rate (the authors: 2e-5 for both). The iteration chosen on validation
(`train.selection_rule`, as epochs are) is exported to `RUN/model` and decodes the test split. Every
stage is a run directory of its own, so a stopped run resumes at its first unfinished stage."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from bearrec.methods import Method


def _not_a_loss(batch):
    raise ValueError("sprec trains in stages (sft and dpo runs per iteration): `bearrec run` or `bearrec train`")


def stage_config(cfg, name: str, start, out: Path):
    """The config of one stage: `cfg` with loss `name` (dpo with beta loss.sprec.beta), one epoch from
    the model at `start`, no test decode, written to `out`."""
    from bearrec.config import from_dict, to_dict

    data = to_dict(cfg)
    data["loss"]["name"] = name
    data["loss"]["pref"]["beta"] = cfg.loss.sprec.beta
    data["model"]["name_or_path"] = str(start)
    data["train"].update(epochs=1, eval_test=False)
    data["output_dir"] = str(out)
    return from_dict(data, source=f"{out} (sprec stage)")


def row_sample(num_rows: int, size: int, seed: int, iteration: int) -> list[int]:
    """Sorted indices of iteration `iteration`'s training rows (all rows when `size` >= num_rows)."""
    if size >= num_rows:
        return list(range(num_rows))
    return sorted(random.Random(f"sprec-{seed}-{iteration}").sample(range(num_rows), size))


def decode_negatives(cfg, start, dataset, rows) -> list[int]:
    """Each row's constrained greedy title (its first item id) under the model saved at `start`."""
    from bearrec.data.encode import build_encoder
    from bearrec.evaluation import distributed_state
    from bearrec.modeling import load_model
    from bearrec.preference import constrained_decode
    from bearrec.runs import exported

    model, tokenizer = load_model(exported(start, cfg.model))
    model.to(distributed_state().device)
    encoder = build_encoder(cfg.prompt, dataset, tokenizer, model)
    ranked = constrained_decode(model, encoder, rows, 1, cfg.decode.batch_size, "sprec negatives")
    return [encoder.trie.items_at(r.nodes[0])[0] for r in ranked]


def _done(run_dir: Path) -> bool:
    from bearrec.rundir import read_state

    state = read_state(run_dir) if run_dir.is_dir() else None
    return bool(state) and "train" in state.get("done", [])


def _iteration(cfg, run_dir: Path, dataset, all_rows, k: int, start) -> bool:
    """Iteration k's stages (those not finished yet); True when any of them ran in this process."""
    from bearrec.atomic import atomic_write_text
    from bearrec.training import train

    folder = run_dir / f"iter-{k}"
    picks = row_sample(len(all_rows), cfg.loss.sprec.rows_per_iteration, cfg.seed, k)
    rows = [all_rows[i] for i in picks]
    ran = False
    record = folder / "negatives.json"
    if not record.exists():
        began = time.perf_counter()
        negatives = decode_negatives(cfg, start, dataset, rows)
        title = dataset.catalogue.title
        same = sum(title(n) == title(r.target) for n, r in zip(negatives, rows))
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"start": str(start), "rows": picks, "negatives": negatives,
                                              "target_title_decoded": same, "decode_s": time.perf_counter() - began})
                          + "\n")
        ran = True
    negatives = json.loads(record.read_text())["negatives"]
    sft = stage_config(cfg, "sft", start, folder / "sft")
    if not _done(folder / "sft"):
        train(sft, resume=True, rows=rows, validate=False)
        ran = True
    dpo = stage_config(cfg, "dpo", folder / "sft" / "model", folder / "dpo")
    if not _done(folder / "dpo"):
        train(dpo, resume=True, rows=rows, negatives=[[n] for n in negatives])
        ran = True
    return ran


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _select(cfg, run_dir: Path, iterations: int) -> dict:
    """selection.json over the finished iterations (each scored by its DPO stage's validation decode)."""
    from bearrec.atomic import atomic_write_text
    from bearrec.selection import choose_epoch, user_scores

    k = min(cfg.train.selection_k, cfg.decode.num_beams)
    entries, scores = [], {}
    for it in range(1, iterations + 1):
        dpo = run_dir / f"iter-{it}" / "dpo"
        (entry,) = _read(dpo / "selection.json")["epochs"]
        preds = (dpo / "eval-valid-epoch-1" / "predictions.jsonl").read_text().splitlines()
        scores[it] = user_scores([json.loads(line) for line in preds], k)
        entries.append({**entry, "epoch": it, "iteration": it})
    choice = choose_epoch(scores, cfg.train.selection_rule)
    best = next(e for e in entries if e["epoch"] == choice["epoch"])
    record = {"unit": "iteration", "epochs": entries, "best": best,
              "choice": {**choice, "min_valid_hits": cfg.train.min_valid_hits,
                         "few_valid_hits": best.get("hits", 0) < cfg.train.min_valid_hits}}
    atomic_write_text(run_dir / "selection.json", json.dumps(record, indent=2) + "\n")
    return record


def train_stages(cfg, resume: bool = False, force: bool = False) -> Path:
    """Every iteration, the choice on validation, the export and the test decode (`bearrec.training.train`
    calls this for `loss.name: sprec`)."""
    from bearrec.atomic import atomic_directory, atomic_write_text
    from bearrec.config import save_config
    from bearrec.data import load_dataset
    from bearrec.errors import ConfigError
    from bearrec.evaluation import evaluate, seeded_subset, test_decode, training_rows, write_outputs
    from bearrec.rundir import RunDirectoryError, claim, has_results
    from bearrec.runs import load_run

    if cfg.model.name_or_path == "tiny":
        raise ConfigError("loss.name=sprec starts from an SFT run: set model.name_or_path to that run's model/ folder")
    dataset = load_dataset(cfg.data)
    if not dataset.valid:
        raise ConfigError(f"loss.name=sprec chooses its iteration on validation: {cfg.data.name} has no validation "
                          f"rows (data.valid_fraction)")
    run_dir = Path(cfg.output_dir)
    n = cfg.loss.sprec.iterations
    with claim(run_dir, cfg, force=force):
        if not resume and has_results(run_dir):
            raise RunDirectoryError(f"{run_dir} already holds a run of this config; --resume to continue it, "
                                    f"--force to delete it and start over")
        save_config(cfg, run_dir)
        all_rows = training_rows(dataset, cfg.train.max_train_examples)
        start, resumed = cfg.model.name_or_path, False
        for k in range(1, n + 1):
            resumed |= not _iteration(cfg, run_dir, dataset, all_rows, k, start)
            start = run_dir / f"iter-{k}" / "dpo" / "model"
        selection = _select(cfg, run_dir, n)
        chosen = selection["best"]["epoch"]
        with atomic_directory(run_dir / "model") as tmp:
            shutil.copytree(run_dir / f"iter-{chosen}" / "dpo" / "model", tmp, dirs_exist_ok=True)
        stages = [_read(run_dir / f"iter-{k}" / stage / "train_metrics.json")
                  for k in range(1, n + 1) for stage in ("sft", "dpo")]
        runtime = sum(m["train_runtime_s"] for m in stages)
        runtime += sum(_read(run_dir / f"iter-{k}" / "negatives.json")["decode_s"] for k in range(1, n + 1))
        atomic_write_text(run_dir / "train_metrics.json", json.dumps({
            "train_runtime_s": runtime, "seconds_per_epoch": None, "seconds_per_iteration": runtime / n,
            "iterations": n, "resumed": resumed,
            "num_train_examples": min(len(all_rows), cfg.loss.sprec.rows_per_iteration),
            "global_steps": sum(m["global_steps"] for m in stages), "train_loss": None}, indent=2) + "\n")
        if cfg.train.eval_test:
            test_idx = seeded_subset(len(dataset.test), cfg.train.test_users)

            def recommender(it: int):
                return load_run(run_dir / f"iter-{it}" / "dpo", config=run_dir / "config.yaml").recommender

            test_decode(recommender(chosen), cfg, dataset.test, test_idx, run_dir, {"selected": selection["best"]})
            if chosen != n:  # the last iteration on the same users, as runs show their last epoch
                preds, metrics = evaluate(recommender(n), dataset.test, test_idx)
                write_outputs(run_dir / "eval-test-last", preds, {**metrics, "epoch": n})
    return run_dir


def _describe(loss: dict) -> str:
    s = loss["sprec"]
    return (f"`sprec` (SPRec self-play: {s['iterations']} iterations of {s['rows_per_iteration']} rows, one SFT and "
            f"one DPO epoch each, DPO beta {s['beta']}, constrained greedy negatives)")


METHODS = (Method("sprec", _not_a_loss, "SPRec: self-play iterations of an SFT and a DPO epoch against the model's own "
                  "greedy titles, from an SFT start (loss.sprec.*)",
                  sections=("sprec",), stages=train_stages, from_sft=True, describe=_describe),)
