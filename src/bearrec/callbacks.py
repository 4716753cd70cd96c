"""The `Trainer` callbacks of a run: the epoch choice on validation (`EpochSelection`), the stop
at the first non-finite gradient (`DivergenceGuard`), checkpoints inside long epochs
(`StepCheckpoints`), and which checkpoint a killed run resumes from (`last_complete_checkpoint`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

from bearrec.atomic import atomic_write_text
from bearrec.config import Config
from bearrec.data.encode import Encoder
from bearrec.errors import BearrecError
from bearrec.evaluation import Recommender, evaluate, write_outputs
from bearrec.metrics import summarize
from bearrec.modeling import save_pretrained
from bearrec.selection import choose_epoch, user_scores


class EpochSelection(TrainerCallback):
    """After each epoch: decode the validation subset, log NDCG@K, choose the epoch by
    `train.selection_rule` (`bearrec.selection`) and export the chosen model."""

    def __init__(self, run_dir: Path, encoder: Encoder, cfg: Config, dataset, indices):
        self.run_dir, self.encoder, self.cfg, self.indices = run_dir, encoder, cfg, indices
        self.dataset, self.valid = dataset, dataset.valid
        self.path = run_dir / "selection.json"
        self.record = json.loads(self.path.read_text()) if self.path.exists() else {"epochs": [], "best": None}
        self.k = min(cfg.train.selection_k, cfg.decode.num_beams)
        self.scores = {}  # epoch -> {user: NDCG@k}; a resumed run reads the finished epochs' decodes
        for e in self.record["epochs"]:
            preds = self.run_dir / f"eval-valid-epoch-{e['epoch']}" / "predictions.jsonl"
            if preds.exists():
                self.scores[e["epoch"]] = user_scores([json.loads(x) for x in preds.read_text().splitlines()], self.k)
        self.trainer = None  # the run's BearTrainer, set once it is built

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        epoch = round(state.epoch)
        was_training = unwrapped.training
        preds, metrics = evaluate(Recommender.for_run(unwrapped, self.encoder, self.cfg, self.dataset), self.valid,
                                  self.indices, progress=False)
        unwrapped.train(was_training)
        k = self.k
        ranks = [p["rank"] for p in preds]
        at_k = summarize(ranks, [k])
        score = at_k[f"NDCG@{k}"]
        self.scores[epoch] = user_scores(preds, k)
        entry = {"epoch": epoch, "step": state.global_step, f"valid_ndcg@{k}": score, f"valid_hr@{k}": at_k[f"HR@{k}"],
                 "users": len(preds), "hits": sum(r is not None and r < k for r in ranks)}
        trainer.log({f"valid_ndcg@{k}": score, "epoch": float(epoch)})
        if trainer.accelerator.is_main_process:
            write_outputs(self.run_dir / f"eval-valid-epoch-{epoch}", preds, metrics)
            self.record["epochs"] = sorted([e for e in self.record["epochs"] if e["epoch"] != epoch] + [entry],
                                           key=lambda e: e["epoch"])
            choice = choose_epoch({e: s for e, s in self.scores.items() if e <= epoch}, self.cfg.train.selection_rule)
            previous = (self.record["best"] or {}).get("epoch")
            self.record["best"] = next(e for e in self.record["epochs"] if e["epoch"] == choice["epoch"])
            min_hits = self.cfg.train.min_valid_hits
            self.record["choice"] = {**choice, "min_valid_hits": min_hits,
                                     "few_valid_hits": self.record["best"].get("hits", 0) < min_hits}
            if choice["epoch"] == epoch:
                save_pretrained(unwrapped, self.encoder.tokenizer, self.run_dir / "model")
            elif choice["epoch"] != previous:  # neither rule moves back to an older epoch (bearrec.selection)
                raise BearrecError(f"{self.path}: epoch selection moved from epoch {previous} to epoch "
                                   f"{choice['epoch']}, which is not exported; rerun with --force")
            atomic_write_text(self.path, json.dumps(self.record, indent=2) + "\n")
        trainer.accelerator.wait_for_everyone()


class TrainingDiverged(BearrecError, RuntimeError):
    pass


def _diverged(state, what: str, value, checkpoints: str) -> str:
    return (f"training diverged at step {state.global_step + 1} (epoch {state.epoch or 0:.2f}): {what} is {value}; "
            f"checkpoints of finished epochs are in {checkpoints}. Try a lower train.learning_rate or "
            f"train.bf16=false")


class DivergenceGuard(TrainerCallback):
    """Stops training with a clear error at the first non-finite gradient, before the optimiser
    applies it (the loss is checked in `BearTrainer.compute_loss`, every step). Trainer would
    otherwise train on, and NaN weights decode to empty recommendation lists."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if grads and not bool(torch.stack([g.isfinite().all() for g in grads]).all()):  # one host sync
            raise TrainingDiverged(_diverged(state, "a gradient", "not finite", args.output_dir))


class StepCheckpoints(TrainerCallback):
    """`train.save_steps`: a checkpoint every N optimiser steps besides the epoch ends, so that a run
    killed inside a long epoch resumes at its last N-step mark (Trainer skips the batches it trained on
    and restores the RNG states: the same weights as an uninterrupted run). Never at an epoch's last
    step: that one is saved after the epoch's validation (`EpochSelection`), and one saved before it
    would let a run killed during that validation resume past the epoch without ever choosing it."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, args, state, control, **kwargs):
        inside_epoch = abs(state.epoch - round(state.epoch)) > 1e-9  # state.epoch is k + step / steps
        if state.global_step % self.every == 0 and inside_epoch:
            control.should_save = True


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest `checkpoints/checkpoint-N` that was saved to the end (Trainer writes
    `trainer_state.json` last); newer incomplete ones (a process killed while saving) are removed."""
    found = sorted((p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.name[11:].isdigit()),
                   key=lambda p: int(p.name[11:]), reverse=True)
    for path in found:  # whatever the weights' format (safetensors, .bin, FSDP shards): Trainer saves them first
        try:
            json.loads((path / "trainer_state.json").read_text())
            return path
        except (OSError, ValueError):
            shutil.rmtree(path)
    return None
