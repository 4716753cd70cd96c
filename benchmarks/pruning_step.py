"""The pruning step of `bearrec run`, as this code does it against an older checkout, on the same users.

    python benchmarks/pruning_step.py --before-src /tmp/old/src --model smollm2-135m \
        --config configs/office-smollm2.yaml --users 8 train.bf16=false decode.autocast=none

Each side runs in its own process (`PYTHONPATH` = --before-src, then this checkout's `src`), loads
the model, and times `analyze` on the same seeded test users. Inside `bearrec run` the test split has
just been decoded (`eval-test/`): code whose `analyze` takes `recommendations` gets those beams
(decoded first, untimed, as the test evaluation did); older code decodes them inside `analyze`, as it
did in the run. Prints seconds per user of both, whether every user agrees (rank below the cap and
pruned flag equal; the violation equal wherever the newer code checks it) and
`RESULT pruning_step_speedup <before s / after s>`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _child(args) -> None:
    import torch

    from bearrec.analysis import analyze
    from bearrec.evaluation import seeded_subset
    from bearrec.runs import load_run

    torch.set_num_threads(args.threads)
    loaded = load_run(args.model, args.config, args.overrides)
    cfg, dataset, recommender = loaded.cfg, loaded.dataset, loaded.recommender
    indices = seeded_subset(len(dataset.test), args.users)
    extra = {}
    if "recommendations" in inspect.signature(analyze).parameters:
        extra["recommendations"] = recommender.recommend([dataset.test[i].history for i in indices])
    start = time.perf_counter()
    result = analyze(recommender, dataset.test, indices, ks=tuple(cfg.analysis.ks), progress=False, **extra)
    seconds = time.perf_counter() - start
    Path(args.child).write_text(json.dumps({"seconds": seconds, "result": result}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-src", required=True, help="the `src` folder of the older checkout (git archive)")
    p.add_argument("--model", required=True, help="a run directory or a model (with --config)")
    p.add_argument("--config", default=None)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides (KEY=VALUE)")
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side, src in (("before", args.before_src), ("after", str(SRC))):
            out = Path(tmp) / f"{side}.json"
            env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": str(args.threads)}
            subprocess.run([sys.executable, __file__, *passed, "--child", str(out)], env=env, check=True)
            got[side] = json.loads(out.read_text())
            print(f"{side}: {got[side]['seconds'] / args.users:.3f} s per user ({args.users} users; {src})", flush=True)
    before, after = got["before"]["result"], got["after"]["result"]
    cap = after["rank_cap"]
    agree = all(a["overall_rank"] == b["overall_rank"] and a["pruned"] == b["pruned"]
                and (a["violation"] is None or a["violation"] == b["violation"])
                for a, b in zip(after["users"], before["users"]))
    for k in (k for k in after if k.startswith("PR@")):
        print(f"{k}: before {before[k]}, after {after[k]}")
    print(f"users given the search without normalisation: before {before.get('raw_beam_users', 'n/a')}, "
          f"after {after.get('raw_beam_users')}")
    checked = sum(u["violation"] is not None for u in after["users"])
    print(f"violation checked: before {sum(u['violation'] is not None for u in before['users'])} users, after {checked}"
          f" (rank cap {cap})")
    print(f"every user agrees: {agree}")
    print(f"RESULT pruning_step_speedup {got['before']['seconds'] / got['after']['seconds']:.2f}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
