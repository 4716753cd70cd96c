"""Which of torch's attention (SDPA) backends return NaN gradients for the masked, left-padded
batches training uses? Needs a CUDA GPU.

    python benchmarks/sdpa_nan_check.py [--trials 20] [--widths 256,320,321,384,448,512]

For each backend and batch width: bf16 queries/keys/values of SmolLM2-135M's shape (9 heads of 64),
a causal boolean mask with random left padding per row, forward and backward; counts the trials whose
query/key/value gradients hold a NaN. Training (`bearrec.training.attention_backends`) leaves out
every backend this finds at fault; on one H200 (torch 2.11, CUDA 13) that was cuDNN's, at widths 320
and 448 in every trial.
"""

from __future__ import annotations

import argparse
import random
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def nan_gradients(width: int, backend: SDPBackend, rng: random.Random, batch: int = 8, heads: int = 9,
                  dim: int = 64) -> bool:
    def leaf(scale: float = 1.0):
        return (torch.randn(batch, heads, width, dim, device="cuda") * scale).bfloat16().requires_grad_()

    q, k, v = leaf(4.0), leaf(4.0), leaf()
    pads = torch.tensor([rng.randint(0, width // 2) for _ in range(batch)], device="cuda")
    real = torch.arange(width, device="cuda")[None, :] >= pads[:, None]
    mask = torch.ones(width, width, dtype=torch.bool, device="cuda").tril()[None] & real[:, None, :]
    with sdpa_kernel([backend]):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    (out.float() * real[:, None, :, None]).sum().backward()
    return any(bool(torch.isnan(t.grad).any()) for t in (q, k, v))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--widths", default="256,320,321,336,384,448,449,512",
                   type=lambda s: [int(x) for x in s.split(",")])
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    rng = random.Random(0)
    torch.manual_seed(0)
    faulty = {}
    print("| backend | " + " | ".join(f"width {w}" for w in args.widths) + " |")
    print("|---|" + "---|" * len(args.widths))
    for backend in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION):
        cells = []
        for width in args.widths:
            try:
                bad = sum(nan_gradients(width, backend, rng) for _ in range(args.trials))
            except RuntimeError as exc:  # the backend does not run this shape here
                cells.append(f"n/a ({str(exc).splitlines()[0][:40]})")
                continue
            cells.append(f"{bad}/{args.trials}")
            if bad:
                faulty.setdefault(backend.name, []).append(width)
        print(f"| {backend.name} | " + " | ".join(cells) + " |")
    print(f"RESULT nan_gradient_widths {faulty or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
