"""Speed of the pruning analysis: every title scored per user (`exact_ranks`) vs the capped rank
(the beam's own titles scored first, then only prefixes above the target's score walked), on the
same users of a finished run, with a check that PR@K and violations agree.

    python benchmarks/pruning_speed.py --run runs/repro-cpu/office/msl/seed=0 --users 30

Prints seconds per user for both and `RESULT pruning_speedup <exact s / capped s>`.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bearrec.analysis import analyze
from bearrec.runs import load_run
from bearrec.evaluation import seeded_subset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished `bearrec run` / `bearrec train` directory")
    p.add_argument("--users", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_run(args.run)
    cfg, dataset, recommender = loaded.cfg, loaded.dataset, loaded.recommender
    indices = seeded_subset(len(dataset.test), args.users)
    ks = tuple(cfg.analysis.ks)
    seconds, results = {}, {}
    for name, exact in (("capped", False), ("exact", True)):
        start = time.perf_counter()
        results[name] = analyze(recommender, dataset.test, indices, ks=ks, progress=False, exact_ranks=exact)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name] / len(indices):.3f} s per user ({len(indices)} users, the decode included)")
    cap = max(ks)
    pairs = zip(results["capped"]["users"], results["exact"]["users"])
    agree = all(a["overall_rank"] == min(b["overall_rank"], cap) and a["pruned"] == b["pruned"]
                and a["violation"] == b["violation"] for a, b in pairs)
    for k in ks:
        print(f"PR@{k}: capped {results['capped'][f'PR@{k}']}, exact {results['exact'][f'PR@{k}']}")
    print(f"every user agrees: {agree}")
    print(f"RESULT pruning_speedup {seconds['exact'] / seconds['capped']:.1f}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
