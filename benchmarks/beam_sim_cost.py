"""Training cost of `beam_sim` (the paper's Objective 3.1: a constrained beam search per training
instance) against sft, msl and bear, on the model and batches of configs/office-tiny.yaml.

One process; the variants alternate step by step (order rotated each round) on the same batches,
so machine noise hits all alike. A step = the trainer's `batch_loss` (for beam_sim: the
no-gradient decode of the batch's prompts for the per-step B-th beam, then forward and loss) +
backward + AdamW. Prints the median step time per variant, the projected seconds per epoch (steps per epoch of the config), the ratios
to sft, and `RESULT beam_sim_over_sft_step_time <ratio>` (the paper: 4.45x-4.70x SFT per epoch).

    python benchmarks/beam_sim_cost.py [--rounds 6] [--config configs/office-tiny.yaml]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

VARIANTS = ("sft", "msl", "bear", "beam_sim")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/office-tiny.yaml")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    import torch

    from bearrec.config import load_config
    from bearrec.data import load_dataset
    from bearrec.evaluation import seeded_subset
    from bearrec.training import Collator, TrainingSet, batch_loss, build_encoder_and_model

    cfg = load_config(args.config, [])
    dataset = load_dataset(cfg.data)
    torch.manual_seed(0)
    encoder, model = build_encoder_and_model(cfg, dataset)
    bs = cfg.train.batch_size
    train_set = TrainingSet(encoder.encode_all(dataset.train[: bs * (args.rounds + 1)]), encoder)
    collate = Collator(encoder.tokenizer.pad_token_id)
    batches = [collate([train_set[i] for i in range(r * bs, (r + 1) * bs)]) for r in range(args.rounds + 1)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.train.bf16 else torch.autocast("cpu", enabled=False)

    def step(variant: str, batch: dict) -> float:
        t = time.perf_counter()
        loss_cfg = cfg.loss
        loss_cfg.name = variant
        with autocast:
            out = batch_loss(model, dict(batch), encoder.trie, loss_cfg, encoder.tokenizer.pad_token_id)
        (out.num / out.den).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times = {v: [] for v in VARIANTS}
    for r, batch in enumerate(batches):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant in order:
            t = step(variant, batch)
            if r:  # round 0 warms up
                times[variant].append(t)
    examples = len(seeded_subset(len(dataset.train), cfg.train.max_train_examples))  # the trainer's sample
    steps_per_epoch = math.ceil(examples / (bs * cfg.train.grad_accum))
    median = {v: statistics.median(ts) for v, ts in times.items()}
    print(f"{args.config}: batch {bs}, {steps_per_epoch} steps per epoch, {args.rounds} timed rounds, "
          f"{torch.get_num_threads()} threads")
    for v in VARIANTS:
        print(f"{v:>9}: median step {median[v]:.3f} s, projected {median[v] * steps_per_epoch:.0f} s/epoch, "
              f"{median[v] / median['sft']:.2f}x sft")
    print(f"RESULT beam_sim_over_sft_step_time {median['beam_sim'] / median['sft']:.2f}")
    print(f"RESULT beam_sim_over_bear_step_time {median['beam_sim'] / median['bear']:.2f}")


if __name__ == "__main__":
    main()
