"""Fine-tuning with SFT / MSL / BEAR on Hugging Face `Trainer`.

A thin `Trainer` subclass computes the LM head only at response positions (left padding puts every
response at the end, so `logits_to_keep` cuts the head to the longest target) and calls the
configured loss with the allowed-token sets built per batch from the trie. After each epoch the
validation subset is decoded with the real decoder; the best epoch by validation NDCG@K is exported
to `RUN/model`, and only that model decodes the test split.

Run directory: `config.yaml` (resolved), `checkpoints/` (Trainer's, one per epoch, resumable),
`selection.json` (per-epoch validation metrics, best epoch), `model/` (the chosen weights and
tokenizer), `eval-valid-epoch-N/`, `eval-test/`.
"""

from __future__ import annotations

import json
import pickle
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from bearrec.atomic import atomic_write_text
from bearrec.callbacks import (DivergenceGuard, EpochSelection, StepCheckpoints, TrainingDiverged, _diverged,
                               last_complete_checkpoint)
from bearrec.config import Config, check, save_config
from bearrec.data.encode import EncodedExample, Encoder, build_encoder
from bearrec.errors import BearrecError, ConfigError
from bearrec.evaluation import (Recommender, distributed_state, evaluate, seeded_subset, softmaxes_for, test_decode,
                                 training_rows, write_outputs)
from bearrec import methods, needs, ragged
from bearrec.losses import Allowed, condition_metrics
from bearrec.losses.base import ratio
from bearrec.losses.beam_sim import align_thresholds
from bearrec.modeling import save_pretrained
from bearrec.rundir import RunDirectoryError, claim, clear_results, has_results, mark
from bearrec.runs import load_exported


class TrainingSet(torch.utils.data.Dataset):
    """Encoded examples with the trie node before every target token (for the allowed sets)."""

    def __init__(self, encoded: list[EncodedExample], encoder: Encoder):
        self.examples = encoded
        self.nodes = {}
        for e in encoded:
            if e.item_id not in self.nodes:
                self.nodes[e.item_id] = encoder.trie.walk(e.target_ids)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {"prompt_ids": e.prompt_ids, "target_ids": e.target_ids, "nodes": self.nodes[e.item_id]}


class Collator:
    """Left-pads prompt + target; lists response positions, targets and their trie nodes."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        input_ids, mask = ragged.pad_sequences([f["prompt_ids"] + f["target_ids"] for f in features], self.pad_token_id)
        keep = max(len(f["target_ids"]) for f in features)
        rows, cols, targets, nodes = [], [], [], []
        for i, f in enumerate(features):
            n = len(f["target_ids"])
            # kept logits cover the last keep + 1 positions; position j of them predicts token
            # width - keep - 1 + j + 1, so target k (of n) is predicted at j = keep - n + k
            rows += [i] * n
            cols += range(keep - n, keep)
            targets += f["target_ids"]
            nodes += f["nodes"]
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": ragged.position_ids(mask),
                "logits_to_keep": keep + 1, "resp_rows": torch.tensor(rows), "resp_cols": torch.tensor(cols),
                "targets": torch.tensor(targets), "nodes": torch.tensor(nodes),
                "prompts": [f["prompt_ids"] for f in features]}


@dataclass
class BatchLoss:
    num: torch.Tensor  # the loss is num / den (den summed over processes first)
    den: torch.Tensor
    outputs: object
    logits: torch.Tensor  # (response tokens, vocabulary)
    targets: torch.Tensor
    allowed: Allowed
    positives: torch.Tensor  # tokens of positive sequences (preference groups also hold negatives)


def batch_loss(model, inputs: dict, trie, loss_cfg, pad_token_id: int, decoder_model=None,
               target_counts=None) -> BatchLoss:
    """The configured method's loss of one collated batch (consumes `inputs`). A method that needs
    decoder thresholds (beam_sim) first decodes the batch's prompts with `decoder_model` (the
    unwrapped model; default `model`); "plain_prompt" and "target_counts": `bearrec.needs`."""
    method = methods.get(loss_cfg.name)
    rows, cols = inputs.pop("resp_rows"), inputs.pop("resp_cols")
    targets, nodes, prompts = inputs.pop("targets"), inputs.pop("nodes"), inputs.pop("prompts")
    reference, group = inputs.pop("reference", None), inputs.pop("group_size", 1)
    plain = inputs.pop("plain", None)
    thresholds = None
    if "thresholds" in method.needs:
        thresholds = beam_thresholds(decoder_model or model, trie, prompts, loss_cfg.bear, pad_token_id)
    outputs = model(**inputs, use_cache=False)
    logits = outputs.logits[rows, cols]
    allowed = Allowed.from_trie(trie, nodes.cpu()).to(logits.device)
    lengths = torch.bincount(rows.cpu(), minlength=len(prompts)).tolist()
    if thresholds is not None:
        thresholds = align_thresholds(thresholds, lengths).to(logits.device)
    batch = methods.Batch(logits, targets, allowed, loss_cfg, rows, lengths, thresholds, reference)
    if plain is not None:  # "plain_prompt": the same response positions after the history-free prompt
        batch.plain_logits = model(**plain, use_cache=False).logits[rows, cols]
    if target_counts is not None:
        batch.nodes, batch.counts = nodes, target_counts
    num, den = method.parts(batch)
    return BatchLoss(num, den, outputs, logits, targets, allowed, rows % group == 0)


def beam_thresholds(model, trie, prompts: list[list[int]], bear_cfg, pad_token_id: int) -> list[list[float]]:
    """beam_sim: the B-th beam's prefix log-probability per step, from the fast decoder (no
    gradient, eval mode) with the softmax of the base loss."""
    from bearrec.decoding import prefix_thresholds

    was_training = model.training
    model.eval()
    try:
        return prefix_thresholds(model, trie, prompts, bear_cfg.num_beams, constrained_softmax=bear_cfg.base == "msl",
                                 pad_token_id=pad_token_id)
    finally:
        model.train(was_training)


class BearTrainer(Trainer):
    def __init__(self, *args, trie=None, loss_cfg=None, target_counts=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trie, self.loss_cfg, self.target_counts = trie, loss_cfg, target_counts
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean: Trainer scales for accumulation
        self._condition = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = batch_loss(model, inputs, self.trie, self.loss_cfg, self.data_collator.pad_token_id,
                           decoder_model=self.accelerator.unwrap_model(model), target_counts=self.target_counts)
        num, den = batch.num, batch.den
        world = self.accelerator.num_processes
        if world > 1:  # normalise by the whole global batch; DDP then averages the gradients
            den = self.accelerator.reduce(den.detach(), reduction="sum") / world
        loss = ratio(num, den)
        if not bool(torch.isfinite(loss.detach())):  # every step, not only the logged ones
            raise TrainingDiverged(_diverged(self.state, "loss", float(loss.detach()), self.args.output_dir))
        if self.state.global_step % max(self.args.logging_steps, 1) == 0:
            keep = batch.positives
            self._condition.append(condition_metrics(batch.logits.detach()[keep], batch.targets[keep],
                                                     batch.allowed.select(keep), self.loss_cfg.bear.num_beams))
        return (loss, batch.outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._condition and "loss" in logs:
            for key in self._condition[0]:
                logs[f"train_{key}"] = round(sum(c[key] for c in self._condition) / len(self._condition), 4)
            self._condition = []
        super().log(logs, *args, **kwargs)


def attention_backends():
    """Context for training: every SDPA backend except cuDNN's. On an H200 (torch 2.11, CUDA 13) its
    backward returned NaN gradients whenever a masked batch was 320 or 448 tokens wide
    (`benchmarks/sdpa_nan_check.py`); the memory-efficient kernel gave none."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def check_config(cfg: Config) -> None:
    """Every setting again (`bearrec.sections.check`: a config changed in place since it was built),
    and what training adds."""
    check(cfg)
    if cfg.model.name_or_path == "tiny" and cfg.model.lora.enabled:
        raise ConfigError("model.name_or_path=tiny is trained from scratch: set model.lora.enabled=false")
    softmaxes_for(cfg.decode, cfg.analysis.other_softmax, "analysis.other_softmax")  # refused before training
    if cfg.analysis.other_softmax and methods.get(cfg.loss.name).train is not None:
        raise ConfigError(f"analysis.other_softmax: loss.name={cfg.loss.name} ranks items without a softmax over "
                          "tokens; set analysis.other_softmax=false")
    if cfg.decode.exclude_history and cfg.analysis.pruning_users != 0:
        raise ConfigError("decode.exclude_history: the pruning analysis ranks every title, the history's too; set "
                          "analysis.pruning_users=0 with it")


def build_encoder_and_model(cfg: Config, dataset):
    from bearrec.data.prompts import PromptTemplate
    from bearrec.modeling import load_model

    template = PromptTemplate.from_config(cfg.prompt, dataset.name)
    texts = None
    if cfg.model.name_or_path == "tiny":
        sample = random.Random(cfg.seed).sample(dataset.train, min(len(dataset.train), 2000))
        texts = [*dataset.catalogue.unique_titles,
                 *(template.render([dataset.catalogue.title(i) for i in e.history]) for e in sample)]
    model, tokenizer = load_model(cfg.model, texts=texts, seed=cfg.seed)
    return build_encoder(cfg.prompt, dataset, tokenizer, model), model


def train(cfg: Config, resume: bool = False, force: bool = False, rows: list | None = None,
          negatives: list[list[int]] | None = None, validate: bool = True) -> Path:
    """Fine-tune into `cfg.output_dir`. `resume`: continue from the newest complete checkpoint (a
    directory without one starts afresh); without it a directory that already holds results of this
    config is refused. `force`: delete what bearrec wrote there first (`bearrec.rundir`).
    A method trained in stages (`Method.stages`: sprec) runs them instead. For those stages:
    `rows` replaces the config's training rows, `negatives` the preference negatives (item ids per
    row), and `validate=False` skips the per-epoch validation (the last epoch is exported)."""
    from bearrec.data import load_dataset

    check_config(cfg)
    method = methods.get(cfg.loss.name)
    if method.stages is not None:
        return method.stages(cfg, resume=resume, force=force)
    run_dir = Path(cfg.output_dir)
    dataset = load_dataset(cfg.data)  # data errors before any model is loaded
    state = distributed_state()
    with claim(run_dir, cfg, force=force):
        state.wait_for_everyone()  # the other processes of `accelerate launch` wait for the main one's claim
        if not resume and has_results(run_dir):
            raise RunDirectoryError(f"{run_dir} already holds a run of this config; --resume to continue it, "
                                    f"--force to delete it and start over")
        found = [None]
        if state.is_main_process:
            found[0] = last_complete_checkpoint(run_dir) if resume else None
            if found[0] is None:  # training starts from step 0: no record of an earlier attempt may remain
                clear_results(run_dir)
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            state.wait_for_everyone()
            broadcast_object_list(found)
        result = _train(cfg, run_dir, dataset, found[0], rows, negatives, validate)
        if state.is_main_process:
            mark(run_dir, "train")
        return result


def prepare_for_training(model, cfg: Config, changes: tuple[str, ...] | None = None) -> dict[str, int]:
    """Exact memory and speed changes for training (`bearrec.frozen`): LoRA dropout keeps a bool
    mask for backward, SwiGLU MLPs recompute silu in backward, and when training and decoding both
    run under bf16 autocast the frozen linear weights are stored in bf16. Values and gradients stay
    bit-identical. `changes` picks some (benchmarks/train_memory.py); returns how many layers each
    changed."""
    from bearrec.frozen import bf16_frozen_linears, compact_lora_dropout, recompute_swiglu

    available = {"lora_dropout": compact_lora_dropout, "swiglu": recompute_swiglu}
    if cfg.train.bf16 and cfg.decode.autocast == "bfloat16":
        available["bf16_linears"] = bf16_frozen_linears
    return {name: fn(model) for name, fn in available.items() if changes is None or name in changes}


def slow_bf16_note(bf16: bool, cuda: bool | None = None, native: bool | None = None) -> str | None:
    """What to tell a user who trains with bf16 autocast on a CPU without native bf16 matmuls
    (oneDNN's own check; an AVX2-only CPU has none): PyTorch then emulates bf16, and a tiny-model
    step was 12-13x slower than fp32 (`benchmarks/bf16_cpu.py`). None when that does not apply."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not bf16 or cuda:
        return None
    if native is None:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        native = True if check is None else bool(check())
    if native:
        return None
    return (f"train.bf16 is true on a CPU without native bf16 support (torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}): autocast emulates bf16 here, several times slower than "
            f"fp32 (benchmarks/bf16_cpu.py: 12x per tiny-model step on an AVX2 CPU); train.bf16=false trains in fp32")


def training_arguments(cfg: Config, output_dir: Path, **overrides) -> TrainingArguments:
    """Trainer's arguments for a config (`benchmarks/train_memory.py` uses the same)."""
    t = cfg.train
    return TrainingArguments(**{
        **dict(output_dir=str(output_dir), per_device_train_batch_size=t.batch_size,
               gradient_accumulation_steps=t.grad_accum, num_train_epochs=t.epochs, learning_rate=t.learning_rate,
               warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
               bf16=t.bf16, logging_steps=t.logging_steps, save_strategy="epoch", report_to=t.report_to or "none",
               seed=cfg.seed, data_seed=cfg.seed, remove_unused_columns=False,
               use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=False,
               logging_nan_inf_filter=False),
        **overrides})


def _train(cfg: Config, run_dir: Path, dataset, checkpoint: Path | None, rows=None, negatives=None,
           validate: bool = True) -> Path:
    torch.manual_seed(cfg.seed)
    encoder, model = build_encoder_and_model(cfg, dataset)
    train_rows = training_rows(dataset, cfg.train.max_train_examples) if rows is None else rows
    train_set = TrainingSet(encoder.encode_all(train_rows), encoder)
    collator, counts = needs.prepare(methods.get(cfg.loss.name), encoder, train_rows,
                                     Collator(encoder.tokenizer.pad_token_id))
    if "preference" in methods.get(cfg.loss.name).needs:
        from bearrec.preference import preference_data

        train_set, collator = preference_data(cfg, run_dir, model, encoder, train_set, train_rows, collator,
                                               negatives)
    prepare_for_training(model, cfg)  # after the reference log-probs: those stay as they were computed
    valid_idx = seeded_subset(len(dataset.valid), cfg.train.valid_users)
    save_config(cfg, run_dir)
    t = cfg.train
    note = slow_bf16_note(t.bf16)
    if note:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    args = training_arguments(cfg, run_dir / "checkpoints")
    selection = EpochSelection(run_dir, encoder, cfg, dataset, valid_idx) if dataset.valid and validate else None
    trainer = BearTrainer(model=model, args=args, train_dataset=train_set,
                          data_collator=collator, trie=encoder.trie, loss_cfg=cfg.loss, target_counts=counts,
                          callbacks=[DivergenceGuard(), *([selection] if selection else []),
                                     *([StepCheckpoints(t.save_steps)] if t.save_steps else [])])
    if selection:
        selection.trainer = trainer
    with attention_backends():
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except pickle.UnpicklingError as exc:  # Trainer loads checkpoint files with weights_only=True
            raise BearrecError(f"{checkpoint}: refused a file that holds more than tensors "
                               f"({str(exc).splitlines()[0]}); delete that checkpoint or rerun with --force") from None
    if trainer.accelerator.is_main_process:
        runtime = result.metrics.get("train_runtime", 0.0)
        start = json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] if checkpoint else 0.0
        epochs_here = t.epochs - start  # a resumed process trained only the epochs after its checkpoint
        if epochs_here > 0 or not (run_dir / "train_metrics.json").exists():  # keep the timing of the epochs
            atomic_write_text(run_dir / "train_metrics.json", json.dumps({
                "train_runtime_s": runtime, "seconds_per_epoch": runtime / epochs_here if epochs_here > 0 else None,
                "epochs_this_process": epochs_here, "resumed": checkpoint is not None,
                "num_train_examples": len(train_set), "global_steps": result.global_step,
                "train_loss": result.training_loss}, indent=2) + "\n")
    if selection is None and trainer.accelerator.is_main_process:
        save_pretrained(trainer.accelerator.unwrap_model(trainer.model), encoder.tokenizer, run_dir / "model")
    if cfg.train.eval_test:
        best = trainer.accelerator.unwrap_model(trainer.model)
        if selection is not None:
            best = load_exported(run_dir / "model", cfg.model)
        test_idx = seeded_subset(len(dataset.test), t.test_users)
        test_decode(Recommender.for_run(best, encoder, cfg, dataset), cfg, dataset.test, test_idx, run_dir,
                    {"selected": selection.record["best"] if selection and trainer.accelerator.is_main_process
                     else None})
        # the record lives on the main process: its decision goes to every process (evaluate gathers)
        decision = [None]
        if selection is not None and trainer.accelerator.is_main_process:
            last = max(e["epoch"] for e in selection.record["epochs"])
            decision[0] = last if selection.record["best"]["epoch"] != last else None
        if trainer.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(decision)
        last = decision[0]
        if last is not None:
            # what selection did: the last epoch's weights (still in memory) on the same test users
            final = trainer.accelerator.unwrap_model(trainer.model).eval()
            preds, metrics = evaluate(Recommender.for_run(final, encoder, cfg, dataset), dataset.test, test_idx)
            if trainer.accelerator.is_main_process:
                metrics["epoch"] = last
                write_outputs(run_dir / "eval-test-last", preds, metrics)
    return run_dir
