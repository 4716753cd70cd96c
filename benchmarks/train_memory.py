"""Peak resident memory and tokens per second of our training step (`BearTrainer`, the configured
loss) against a plain Hugging Face `Trainer` SFT step of the same model, LoRA and batch.

Both load the model the same way (`bearrec.training.build_encoder_and_model` on the config: the
packaged SmolLM2-135M + LoRA r 8 on q/v for configs/office-smollm2.yaml), take the same
`TrainingArguments` (`bearrec.training.training_arguments`: bf16 autocast, AdamW, grad clipping) and
train on the same batch: the first `--batch-size` rows of the config's training sample, encoded by
bearrec's encoder (alpaca prompt), every step. Ours: `Collator` + `BearTrainer` with `--loss` and the
divergence guard, as `bearrec run` builds them (`prepare_for_training` included). Plain: the standard
causal-LM labels (prompt tokens -100), `DataCollatorForSeq2Seq` (right padding), the model's own
loss over full-sequence logits.

Each variant runs in its own fresh process (peak RSS is per process): `--warmup` steps, then
`--steps` timed ones (Trainer's own loop; a step is the time between two `on_step_end`s: batch,
forward, loss, backward, clipping, AdamW). Repetitions alternate the order (ours, plain / plain,
ours) so machine load hits both. Prints absolute figures per process and, last,

    RESULT train_peak_memory_over_plain <median peak RSS ours / median peak RSS plain>
    RESULT train_tokens_per_s_over_plain <median over repetitions of (tokens/s ours / tokens/s plain)>

    python benchmarks/train_memory.py [--batch-size 8] [--loss bear] [--steps 4] [--warmup 1] [--reps 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import threading
import time

MiB = 2 ** 20


def _rss() -> dict[str, int]:
    """Resident memory now: total, anonymous (the heap, tensors) and file-backed (mapped files: the
    libraries and a checkpoint read through a memory map, whose clean pages processes share)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "RssAnon", "RssFile")))
    kb = {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
    return {"rss": kb["VmRSS"], "anon": kb["RssAnon"], "file": kb["RssFile"]}


class _Sampler:
    """Peak resident memory in a window (each field's own peak), sampled every 5 ms; ru_maxrss
    covers the whole process."""

    def __init__(self):
        self.peak, self._stop = {"rss": 0, "anon": 0, "file": 0}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        for k, v in _rss().items():
            self.peak[k] = max(self.peak[k], v)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def worker(variant: str, opts: dict, queue) -> None:
    os.environ["OMP_NUM_THREADS"] = str(opts["threads"])
    import torch

    torch.set_num_threads(opts["threads"])
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback

    from bearrec.config import load_config
    from bearrec.data import load_dataset
    from bearrec.evaluation import seeded_subset
    from bearrec.training import (BearTrainer, Collator, DivergenceGuard, TrainingSet, attention_backends,
                                  build_encoder_and_model, prepare_for_training, training_arguments)

    cfg = load_config(opts["config"], [f"train.batch_size={opts['batch_size']}", f"loss.name={opts['loss']}",
                                       *opts["overrides"]])
    dataset = load_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    encoder, model = build_encoder_and_model(cfg, dataset)
    bs, steps = cfg.train.batch_size, opts["warmup"] + opts["steps"]
    sample = seeded_subset(len(dataset.train), cfg.train.max_train_examples)[:bs]
    encoded = encoder.encode_all([dataset.train[i] for i in sample])
    tok = encoder.tokenizer
    if variant == "ours":
        items = TrainingSet(encoded, encoder)
        collator = Collator(tok.pad_token_id)
        changes = None if opts["changes"] == "all" else tuple(c for c in opts["changes"].split(",") if c != "none")
        prepare_for_training(model, cfg, changes)
    else:
        items = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
                 for e in encoded]
        tok.padding_side = "right"
        collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)

    class Repeat(torch.utils.data.IterableDataset):  # the same batch every step, in order
        def __iter__(self):
            for _ in range(steps):
                yield from (items[i] for i in range(bs))

    ends = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = training_arguments(cfg, tmp, max_steps=steps, save_strategy="no", report_to="none",
                                  disable_tqdm=True, logging_strategy="no")
        common = dict(model=model, args=args, train_dataset=Repeat(), data_collator=collator)
        if variant == "ours":
            trainer = BearTrainer(**common, trie=encoder.trie, loss_cfg=cfg.loss,
                                  callbacks=[DivergenceGuard(), Timer()])
        else:
            trainer = Trainer(**common, callbacks=[Timer()])
        loaded = _rss()
        with attention_backends(), _Sampler() as window:
            result = trainer.train()
    times = [b - a for a, b in zip(ends, ends[1:])][opts["warmup"]:]
    queue.put({"variant": variant, "loaded": loaded, "peak_train": window.peak,
               "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "step_s": statistics.median(times), "times": times, "loss": result.training_loss,
               "tokens": sum(len(e.input_ids) for e in encoded), "width": max(len(e.input_ids) for e in encoded),
               "targets": sum(len(e.target_ids) for e in encoded), "threads": torch.get_num_threads()})


def run_one(variant: str, opts: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(variant, opts, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/office-smollm2.yaml")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--loss", default="bear", help="our step's loss (loss.name); the plain step is always SFT")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per process")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2, help="processes per variant, order alternating")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--changes", default="all",
                    help="ours: which of prepare_for_training's changes (all, none, or e.g. lora_dropout,bf16_linears)")
    ap.add_argument("--variants", default="ours,plain", help="run only some (no ratios without both)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value, for both variants")
    opts = vars(ap.parse_args())

    chosen = opts["variants"].split(",")
    runs = {v: [] for v in ("ours", "plain") if v in chosen}
    for rep in range(opts["reps"]):
        for variant in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
            r = run_one(variant, opts)
            runs[variant].append(r)
            w, l0 = r["peak_train"], r["loaded"]
            print(f"rep {rep} {variant:>5}: peak RSS {r['maxrss'] / MiB:,.0f} MiB; before training {l0['rss'] / MiB:,.0f} "
                  f"(anon {l0['anon'] / MiB:,.0f}, file {l0['file'] / MiB:,.0f}), peak while training {w['rss'] / MiB:,.0f} "
                  f"(anon {w['anon'] / MiB:,.0f}, file {w['file'] / MiB:,.0f}); step {r['step_s']:.2f} s "
                  f"({', '.join(f'{t:.2f}' for t in r['times'])}), {r['tokens'] / r['step_s']:.0f} tokens/s, "
                  f"loss {r['loss']:.4f}", flush=True)
    r0 = next(iter(runs.values()))[0]
    print(f"batch {opts['batch_size']} rows, {r0['tokens']} tokens ({r0['width']} wide, {r0['targets']} response "
          f"tokens), our loss {opts['loss']} with changes {opts['changes']}, {r0['threads']} thread(s), "
          f"{opts['warmup']} warm-up + {opts['steps']} timed steps per process, {opts['reps']} processes per variant")
    peak = {v: statistics.median(r["maxrss"] for r in rs) for v, rs in runs.items()}
    loaded = {v: statistics.median(r["loaded"]["rss"] for r in rs) for v, rs in runs.items()}
    anon = {v: statistics.median(r["peak_train"]["anon"] for r in rs) for v, rs in runs.items()}
    tps = {v: statistics.median(r["tokens"] / r["step_s"] for r in rs) for v, rs in runs.items()}
    for v in runs:
        print(f"{v:>5}: peak RSS {peak[v] / MiB:,.0f} MiB (before training {loaded[v] / MiB:,.0f}; peak anonymous "
              f"{anon[v] / MiB:,.0f}), {tps[v]:.0f} tokens/s")
    if len(runs) < 2:
        return
    ratios = [(o["tokens"] / o["step_s"]) / (p["tokens"] / p["step_s"]) for o, p in zip(runs["ours"], runs["plain"])]
    print(f"tokens/s ours/plain per repetition: {', '.join(f'{x:.3f}' for x in ratios)}")
    print(f"peak anonymous memory ours/plain {anon['ours'] / anon['plain']:.3f}")
    print(f"RESULT train_peak_memory_over_plain {peak['ours'] / peak['plain']:.3f}")
    print(f"RESULT train_tokens_per_s_over_plain {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
