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
ours) so machine load hits both. Per process it prints the peak RSS (ru_maxrss) and, sampled every
5 ms while training, the peaks of anonymous and file-backed resident memory and of what glibc's
malloc has handed out ("live": the gap to anonymous RSS is freed memory the heap keeps). Last:

    RESULT train_peak_memory_over_plain <median peak RSS ours / median peak RSS plain>
    RESULT train_tokens_per_s_over_plain <median over repetitions of (tokens/s ours / tokens/s plain)>

    python benchmarks/train_memory.py [--batch-size 8] [--loss bear] [--steps 3] [--warmup 1] [--reps 2]
    python benchmarks/train_memory.py --variants ours --changes none   # ours without prepare_for_training
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/train_memory.py    # glibc: big blocks mmapped (both)
    python benchmarks/train_memory.py --breakdown [--changes none]     # what ours keeps for backward
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import threading
import time

MiB = 2 ** 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _MallInfo2
except (OSError, AttributeError):  # not glibc >= 2.33: no allocator figures
    _libc = None


def _rss() -> dict[str, int]:
    """Resident memory now: total, anonymous (the heap, tensors) and file-backed (mapped files: the
    libraries and a checkpoint read through a memory map, whose clean pages processes share); and
    what glibc's malloc has handed out and not had back (live: heap in use + mmapped chunks)."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "RssAnon", "RssFile")))
    kb = {k: int(v.split()[0]) * 1024 for k, v in fields.items()}
    out = {"rss": kb["VmRSS"], "anon": kb["RssAnon"], "file": kb["RssFile"], "live": 0}
    if _libc is not None:
        m = _libc.mallinfo2()
        out["live"] = int(m.uordblks + m.hblkhd)
    return out


class _Sampler:
    """Peak resident memory in a window (each field's own peak), sampled every 5 ms; ru_maxrss
    covers the whole process."""

    def __init__(self):
        self.peak, self._stop = {"rss": 0, "anon": 0, "file": 0, "live": 0}, threading.Event()
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

    from bearrec.callbacks import DivergenceGuard
    from bearrec.config import load_config
    from bearrec.data import load_dataset
    from bearrec.evaluation import seeded_subset
    from bearrec.training import (BearTrainer, Collator, TrainingSet, attention_backends,
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
        if opts["changes"] == "all":
            prepare_for_training(model, cfg)
        else:
            prepare_for_training(model, cfg, tuple(c for c in opts["changes"].split(",") if c != "none"))
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
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with attention_backends(), _Sampler() as window:
            result = trainer.train()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    times = [b - a for a, b in zip(ends, ends[1:])][opts["warmup"]:]
    queue.put({"variant": variant, "loaded": loaded, "peak_train": window.peak,
               "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               "step_s": statistics.median(times), "times": times, "faults_per_step": faults / steps,
               "loss": result.training_loss,
               "tokens": sum(len(e.input_ids) for e in encoded), "width": max(len(e.input_ids) for e in encoded),
               "targets": sum(len(e.target_ids) for e in encoded), "threads": torch.get_num_threads()})


def breakdown(opts: dict, queue) -> None:
    """One forward pass of our step (with `--changes`): the tensors autograd keeps for backward,
    by the source line that saved them (each storage counted once, where it was first saved)."""
    import collections
    import traceback

    import torch

    torch.set_num_threads(opts["threads"])
    from bearrec.config import load_config
    from bearrec.data import load_dataset
    from bearrec.evaluation import seeded_subset
    from bearrec.training import Collator, TrainingSet, batch_loss, build_encoder_and_model, prepare_for_training

    cfg = load_config(opts["config"], [f"train.batch_size={opts['batch_size']}", f"loss.name={opts['loss']}",
                                       *opts["overrides"]])
    dataset = load_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    encoder, model = build_encoder_and_model(cfg, dataset)
    if opts["changes"] == "all":
        prepare_for_training(model, cfg)
    else:
        prepare_for_training(model, cfg, tuple(c for c in opts["changes"].split(",") if c != "none"))
    sample = seeded_subset(len(dataset.train), cfg.train.max_train_examples)[: cfg.train.batch_size]
    items = TrainingSet(encoder.encode_all([dataset.train[i] for i in sample]), encoder)
    batch = Collator(encoder.tokenizer.pad_token_id)([items[i] for i in range(len(items))])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, by_line, shapes = set(), collections.Counter(), collections.defaultdict(collections.Counter)

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in params:
            seen.add(key)
            frame = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename][-1]
            line = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.line.strip()[:60]}"
            by_line[line] += t.untyped_storage().nbytes()
            shapes[line][f"{tuple(t.shape)} {str(t.dtype)[6:]}"] += 1
        return t

    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.bf16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        batch_loss(model, dict(batch), encoder.trie, cfg.loss, encoder.tokenizer.pad_token_id)
    queue.put([(line, n, dict(shapes[line].most_common(3))) for line, n in by_line.most_common(15)])


def run_one(variant: str, opts: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=breakdown if variant == "breakdown" else worker,
                       args=(opts, queue) if variant == "breakdown" else (variant, opts, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/office-smollm2.yaml")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--loss", default="bear", help="our step's loss (loss.name); the plain step is always SFT")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2, help="processes per variant, order alternating")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--changes", default="all",
                    help="ours: which of prepare_for_training's changes (all, none, or e.g. lora_dropout,bf16_linears)")
    ap.add_argument("--variants", default="ours,plain", help="run only some (no ratios without both)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value, for both variants")
    ap.add_argument("--breakdown", action="store_true",
                    help="instead: what one forward pass of ours keeps for backward, by source line")
    opts = vars(ap.parse_args())
    if opts.pop("breakdown"):
        rows = run_one("breakdown", opts)
        print(f"kept for backward: {sum(n for _, n, _ in rows) / MiB:,.1f} MiB in the 15 largest lines "
              f"(changes {opts['changes']})")
        for line, n, shapes in rows:
            print(f"{n / MiB:8.1f} MiB  {line}  {shapes}")
        return

    chosen = opts["variants"].split(",")
    runs = {v: [] for v in ("ours", "plain") if v in chosen}
    for rep in range(opts["reps"]):
        for variant in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
            r = run_one(variant, opts)
            runs[variant].append(r)
            w, l0 = r["peak_train"], r["loaded"]
            print(f"rep {rep} {variant:>5}: peak RSS {r['maxrss'] / MiB:,.0f} MiB; before training "
                  f"{l0['rss'] / MiB:,.0f} (anon {l0['anon'] / MiB:,.0f}, file {l0['file'] / MiB:,.0f}), "
                  f"peak while training {w['rss'] / MiB:,.0f} "
                  f"(anon {w['anon'] / MiB:,.0f}, file {w['file'] / MiB:,.0f}; malloc live {w['live'] / MiB:,.0f}); "
                  f"step {r['step_s']:.2f} s "
                  f"({', '.join(f'{t:.2f}' for t in r['times'])}), {r['tokens'] / r['step_s']:.0f} tokens/s, "
                  f"loss {r['loss']:.4f}, {r['faults_per_step']:,.0f} page faults per step", flush=True)
    r0 = next(iter(runs.values()))[0]
    print(f"batch {opts['batch_size']} rows, {r0['tokens']} tokens ({r0['width']} wide, {r0['targets']} response "
          f"tokens), our loss {opts['loss']} with changes {opts['changes']}, {r0['threads']} thread(s), "
          f"{opts['warmup']} warm-up + {opts['steps']} timed steps per process, {opts['reps']} processes per variant")
    peak = {v: statistics.median(r["maxrss"] for r in rs) for v, rs in runs.items()}
    loaded = {v: statistics.median(r["loaded"]["rss"] for r in rs) for v, rs in runs.items()}
    anon = {v: statistics.median(r["peak_train"]["anon"] for r in rs) for v, rs in runs.items()}
    live = {v: statistics.median(r["peak_train"]["live"] for r in rs) for v, rs in runs.items()}
    tps = {v: statistics.median(r["tokens"] / r["step_s"] for r in rs) for v, rs in runs.items()}
    for v in runs:
        print(f"{v:>5}: peak RSS {peak[v] / MiB:,.0f} MiB (before training {loaded[v] / MiB:,.0f}; peak anonymous "
              f"{anon[v] / MiB:,.0f}; peak malloc live {live[v] / MiB:,.0f}), {tps[v]:.0f} tokens/s")
    if len(runs) < 2:
        return
    ratios = [(o["tokens"] / o["step_s"]) / (p["tokens"] / p["step_s"]) for o, p in zip(runs["ours"], runs["plain"])]
    print(f"tokens/s ours/plain per repetition: {', '.join(f'{x:.3f}' for x in ratios)}")
    print(f"ours/plain: peak anonymous memory {anon['ours'] / anon['plain']:.3f}, peak malloc live "
          f"{live['ours'] / live['plain']:.3f}")
    print(f"RESULT train_peak_memory_over_plain {peak['ours'] / peak['plain']:.3f}")
    print(f"RESULT train_tokens_per_s_over_plain {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
