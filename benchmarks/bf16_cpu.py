"""bf16 autocast against fp32 for one training step of the tiny model of configs/office-tiny.yaml
(batch 64, 60 tokens, AdamW) on this CPU, one thread, the two interleaved step by step; the median
of per-step ratios. On a CPU without native bf16 (oneDNN's check; e.g. AVX2 only) PyTorch emulates
bf16 and bearrec warns at the start of training (`bearrec.training.slow_bf16_note`).

    python benchmarks/bf16_cpu.py [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=4000, hidden_size=192, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=512)
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    batch = torch.randint(0, cfg.vocab_size, (64, 60))

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - start

    step(False), step(True)  # warm-up
    times = {False: [], True: []}
    for i in range(args.steps):
        for bf16 in ((False, True) if i % 2 == 0 else (True, False)):
            times[bf16].append(step(bf16))
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: "unknown")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 (oneDNN): {check()}")
    print(f"median step: fp32 {statistics.median(times[False]):.3f} s, bf16 autocast {statistics.median(times[True]):.3f} s")
    ratios = [b / f for f, b in zip(times[False], times[True])]
    print(f"RESULT bf16_step_over_fp32 {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
