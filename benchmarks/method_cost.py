"""Training cost of every fine-tuning method against sft, on the model and batches of a config
(default configs/office-tiny.yaml), measured alone in one process.

The methods alternate step by step (order rotated each round) on the same training rows, so machine
noise hits all alike. A step = the trainer's `batch_loss` (with each method's extra inputs: the
history-free forward of cft, the target counts of d2lr and igd, preference groups of N + 1
sequences with their reference log-probs) + backward + AdamW. One-off costs are timed apart: the
reference log-probs of the preference methods (one no-gradient pass over every group, once per run)
and rosepo's "self" negatives (a B = 2 decode of every training row). sprec is projected from the
same measurements: per iteration, a constrained greedy decode of its rows, an sft epoch and a dpo
epoch on them, and the dpo reference pass.

Prints median step time, projected seconds per epoch (the config's steps per epoch) and the ratio
to sft per method, and `RESULT <method>_over_sft_epoch <ratio>` (setup included for one epoch of the
config; sprec: one iteration over an sft epoch).

    python benchmarks/method_cost.py [--rounds 6] [--config configs/office-tiny.yaml]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

METHODS = ("sft", "msl", "bear", "cft", "d2lr", "igd", "dpo", "sdpo", "rosepo")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/office-tiny.yaml")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; sft is always measured")
    args = ap.parse_args()
    names = ["sft", *[m for m in args.methods.split(",") if m and m != "sft"]]

    import torch

    from bearrec import methods, needs
    from bearrec.config import load_config
    from bearrec.data import load_dataset
    from bearrec.evaluation import training_rows
    from bearrec.preference import (PreferenceCollator, PreferenceSet, constrained_decode, group_log_probs,
                                    sample_negatives)
    from bearrec.training import Collator, TrainingSet, batch_loss, build_encoder_and_model

    cfg = load_config(args.config, [])
    dataset = load_dataset(cfg.data)
    torch.manual_seed(0)
    encoder, model = build_encoder_and_model(cfg, dataset)
    pad = encoder.tokenizer.pad_token_id
    rows = training_rows(dataset, cfg.train.max_train_examples)
    bs = cfg.train.batch_size
    sample = rows[: bs * (args.rounds + 1)]
    plain_set = TrainingSet(encoder.encode_all(sample), encoder)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.train.bf16 else torch.autocast("cpu", enabled=False)

    loss_cfgs, batches, counts, setup = {}, {}, {}, {}
    for name in names:
        method = methods.get(name)
        loss_cfg = copy.deepcopy(cfg.loss)
        loss_cfg.name = name
        loss_cfgs[name] = loss_cfg
        collator, counts[name] = needs.prepare(method, encoder, rows, Collator(pad))
        data = plain_set
        if "preference" in method.needs:
            began = time.perf_counter()
            if method.negatives is not None:  # rosepo: the starting model's own titles, popular ones
                work = copy.deepcopy(cfg)
                work.loss = loss_cfg
                negatives = method.negatives(work, model, encoder, sample)
            else:
                negatives = sample_negatives([r.target for r in sample], encoder, method.num_negatives(loss_cfg), 0)
            chosen = time.perf_counter() - began
            data, collator = PreferenceSet(plain_set, encoder, negatives), PreferenceCollator(collator)
            began = time.perf_counter()
            with autocast:
                data.reference = torch.cat([group_log_probs(model, collator([data[i] for i in range(s, s + bs)]))
                                            for s in range(0, len(data), bs)])
            per_row = (chosen + time.perf_counter() - began) / len(sample)
            setup[name] = per_row * len(rows)  # once per run, over the run's training rows
        batches[name] = [collator([data[i] for i in range(r * bs, (r + 1) * bs)]) for r in range(args.rounds + 1)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(name: str, batch: dict) -> float:
        t = time.perf_counter()
        with autocast:
            out = batch_loss(model, dict(batch), encoder.trie, loss_cfgs[name], pad, target_counts=counts[name])
        (out.num / out.den).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times = {n: [] for n in names}
    for r in range(args.rounds + 1):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t = step(name, batches[name][r])
            if r:  # round 0 warms up
                times[name].append(t)
    steps = math.ceil(len(rows) / (bs * cfg.train.grad_accum))
    median = {n: statistics.median(ts) for n, ts in times.items()}
    epoch = {n: median[n] * steps + setup.get(n, 0.0) for n in names}
    print(f"{args.config}: {len(rows)} training rows, batch {bs}, {steps} steps per epoch, {args.rounds} timed "
          f"rounds, {torch.get_num_threads()} threads")
    for n in names:
        once = f", one-off {setup[n]:.0f} s (reference pass{', own negatives' if n == 'rosepo' else ''})" \
            if n in setup else ""
        print(f"{n:>9}: median step {median[n]:.3f} s, projected {epoch[n]:.0f} s/epoch{once}, "
              f"{epoch[n] / epoch['sft']:.2f}x sft")
    if "dpo" in names:  # sprec's iteration: decode its rows greedily, one sft and one dpo epoch on them
        per = min(cfg.loss.sprec.rows_per_iteration, len(rows))
        began = time.perf_counter()
        with autocast:
            constrained_decode(model, encoder, sample, 1, cfg.decode.batch_size, "sprec negatives")
        decode = (time.perf_counter() - began) / len(sample) * per
        it_steps = math.ceil(per / (bs * cfg.train.grad_accum))
        iteration = decode + (median["sft"] + median["dpo"]) * it_steps + setup["dpo"] * per / len(rows)
        print(f"    sprec: projected {iteration:.0f} s per iteration of {per} rows (decode {decode:.0f} s), "
              f"{iteration / epoch['sft']:.2f}x an sft epoch; x{cfg.loss.sprec.iterations} iterations")
        print(f"RESULT sprec_iteration_over_sft_epoch {iteration / epoch['sft']:.2f}")
    for n in names[1:]:
        print(f"RESULT {n}_over_sft_epoch {epoch[n] / epoch['sft']:.2f}")


if __name__ == "__main__":
    main()
