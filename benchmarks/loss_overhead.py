"""Step time and peak memory of the sft, msl and bear losses, and of a naive msl that computes
full-sequence logits and dense (tokens x vocab) masks (the authors' code path).

Identical batches and models: (a) SmolLM2-135M with LoRA (r 8, q/v) on MovieLens-1M prompts and
(b) a tiny Qwen2 with a 151,936-token vocabulary on Office prompts. One training step = forward,
loss, backward, AdamW step. Times: all variants in one process, alternating step by step, medians.
Memory: each variant in a fresh process, so its peak resident memory (CPU; peak allocated on GPU)
is its own. Prints medians, ratios, and last
`RESULT bear_over_msl_step_time <ratio on (a)>`.

    python benchmarks/loss_overhead.py [--steps 6] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time
from pathlib import Path

SHARED = Path(os.environ.get("BEARREC_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
VARIANTS = ("sft", "msl", "bear", "naive_msl")


def setup(which: str, batch_size: int):
    import torch

    from bearrec.config import DataConfig, LoraConfig, ModelConfig, PromptConfig, TinyModelConfig
    from bearrec.data.encode import Encoder
    from bearrec.data.prompts import PromptTemplate
    from bearrec.data.registry import load_dataset
    from bearrec.modeling import build_tiny_model, load_model, train_bpe_tokenizer
    from bearrec.training import Collator, TrainingSet

    if which == "smollm2":
        ds = load_dataset(DataConfig(name="movielens-1m"))
        model, tok = load_model(ModelConfig(name_or_path="smollm2-135m", lora=LoraConfig(r=8, alpha=16)))
    else:
        ds = load_dataset(DataConfig(name="office", data_dir=str(SHARED)))
        template = PromptTemplate.from_config(PromptConfig(), ds.name)
        tok = train_bpe_tokenizer([*ds.catalogue.unique_titles, template.render(["x"])], vocab_size=4000)
        tiny = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256)
        model = build_tiny_model(tiny, vocab_size=151_936, eos_token_id=tok.eos_token_id, seed=0)
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(), ds.name), ds.catalogue)
    rows = ds.train[:batch_size]
    batch = Collator(tok.pad_token_id)([TrainingSet(enc.encode_all(rows), enc)[i] for i in range(len(rows))])
    torch.manual_seed(0)
    return model, enc, batch


def naive_msl(model, enc, batch):
    """Full-sequence logits; a dense (response tokens x vocab) mask per example, as the authors build."""
    import torch

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits  # (b, L, V)
    vocab = logits.shape[-1]
    keep = batch["logits_to_keep"]
    width = logits.shape[1]
    masks = []
    for nodes in batch["nodes"].split(torch.bincount(batch["resp_rows"]).tolist()):
        dense = enc.trie.allowed_mask(nodes, vocab)  # (n, V) bool, materialised per example
        masks.append(dense)
    rows, cols = batch["resp_rows"], batch["resp_cols"]
    picked = logits[rows, width - keep + cols]
    mask = torch.cat(masks)
    masked = picked.float().masked_fill(~mask, float("-inf"))
    return torch.nn.functional.cross_entropy(masked, batch["targets"])


def train_step(model, opt, enc, batch, variant):
    import torch

    from bearrec.config import BearConfig, LossConfig
    from bearrec.losses import Allowed
    from bearrec.methods import loss as method_loss

    t = time.perf_counter()
    if variant == "naive_msl":
        loss = naive_msl(model, enc, batch)
    else:
        cfg = LossConfig(name=variant, bear=BearConfig(lam=0.25, xi=2.75))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], logits_to_keep=batch["logits_to_keep"], use_cache=False)
        logits = out.logits[batch["resp_rows"], batch["resp_cols"]]
        allowed = Allowed.from_trie(enc.trie, batch["nodes"])
        loss = method_loss(logits, batch["targets"], allowed, cfg)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, loss.item()


def _prepared(which, batch_size):
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, enc, batch = setup(which, batch_size)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, opt, enc, batch


def peak_memory(which, variant, steps, batch_size, queue):
    """In a fresh process: resident memory after loading, and the peak over `steps` steps."""
    import torch

    model, opt, enc, batch = _prepared(which, batch_size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(steps):
        _, loss = train_step(model, opt, enc, batch, variant)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put((peak, base, loss))


def interleaved_times(which, steps, batch_size, queue):
    """One process, the variants alternating step by step (order rotated each round), so that
    machine noise and drift hit all of them alike."""
    model, opt, enc, batch = _prepared(which, batch_size)
    times = {v: [] for v in VARIANTS}
    for r in range(steps + 1):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant in order:
            t, _ = train_step(model, opt, enc, batch, variant)
            if r:  # round 0 warms up
                times[variant].append(t)
    queue.put({v: statistics.median(ts) for v, ts in times.items()})


def _in_process(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def measure(which, steps, batch_size):
    times = _in_process(interleaved_times, which, steps, batch_size)
    memory = {v: _in_process(peak_memory, which, v, 3, batch_size) for v in VARIANTS}
    for v in VARIANTS:
        peak, base, loss = memory[v]
        print(f"{which} {v:>9}: median step {times[v]:.3f} s, peak memory {peak / 2**20:.0f} MiB "
              f"(after loading {base / 2**20:.0f} MiB), loss {loss:.4f}")
    for v in ("sft", "bear", "naive_msl"):
        print(f"{which} {v}/msl: time {times[v] / times['msl']:.3f}, peak memory {memory[v][0] / memory['msl'][0]:.3f}")
    return {v: (times[v], memory[v][0]) for v in VARIANTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    measure("tiny-151k", args.steps, args.batch_size)
    res = measure("smollm2", args.steps, args.batch_size)
    print(f"RESULT bear_over_msl_peak_memory {res['bear'][1] / res['msl'][1]:.3f}")
    print(f"RESULT bear_over_msl_step_time {res['bear'][0] / res['msl'][0]:.3f}")


if __name__ == "__main__":
    main()
