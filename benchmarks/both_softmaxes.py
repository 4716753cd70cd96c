"""Decoding the test users both ways (softmax over the trie-valid tokens and over the vocabulary, as
`analysis.other_softmax` does): one prefill for both (`bearrec.decoding.beam_search_softmaxes`) vs two
separate searches (`beam_search` twice, each prefilling the prompts).

SmolLM2-135M (packaged, no adapters) on Office titles with the prompt of configs/office-smollm2.yaml
(alpaca, the last 5 history titles), seeded test users, B = 10, fp32. Per batch the two ways run back
to back, the one going first alternating from batch to batch, so that load from other jobs falls on
both alike; the results are asserted identical (titles, order and scores: the fork reads the same
prompt K/V). Also timed alone: the batch's prefill, for its share of a separate search.
Prints the median of the per-batch ratios (separate / together):
`RESULT both_softmaxes_speedup <median ratio>`.

    python benchmarks/both_softmaxes.py [--users 16] [--batch-size 8] [--beams 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from bearrec.config import DataConfig, LoraConfig, ModelConfig, PromptConfig
from bearrec.data.encode import Encoder
from bearrec.data.prompts import PromptTemplate
from bearrec.data.registry import load_dataset
from bearrec.decoding import beam_search, beam_search_softmaxes
from bearrec.evaluation import seeded_subset
from bearrec.feeding import Prefilled
from bearrec.modeling import load_model

SHARED = Path(os.environ.get("BEARREC_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady under other load)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    office = load_dataset(DataConfig(name="office", data_dir=str(SHARED)))
    model, tok = load_model(ModelConfig(name_or_path="smollm2-135m", lora=LoraConfig(enabled=False)))
    model.eval()
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="alpaca", max_history_items=5), "office"),
                  office.catalogue)
    users = [office.test[i] for i in seeded_subset(len(office.test), args.users, 0)]
    prompts = [enc.prompt_ids(e.history) for e in users]
    pad, B = tok.pad_token_id, args.beams
    print(f"SmolLM2-135M, Office ({len(enc.trie)} titles), {len(users)} users, batch {args.batch_size}, B = {B}, "
          f"torch threads {torch.get_num_threads()}, prompts {sum(map(len, prompts)) / len(prompts):.0f} tokens")

    def separate(batch):
        return [beam_search(model, enc.trie, batch, B, constrained_softmax=s, pad_token_id=pad) for s in (True, False)]

    def together(batch):
        return beam_search_softmaxes(model, enc.trie, batch, B, (True, False), pad_token_id=pad)

    with torch.no_grad():
        together(prompts[:2])  # warm-up
        ratios, t_sep, t_tog, t_pre = [], 0.0, 0.0, 0.0
        for k, i in enumerate(range(0, len(prompts), args.batch_size)):
            batch = prompts[i:i + args.batch_size]
            ways = [lambda: separate(batch), lambda: together(batch)]
            timed = [_timed(f) for f in (ways if k % 2 == 0 else ways[::-1])]
            (sep, dt_sep), (tog, dt_tog) = timed if k % 2 == 0 else timed[::-1]
            for a, b in zip(sep, tog):
                assert [(r.paths, r.scores) for r in a] == [(r.paths, r.scores) for r in b], "results differ"
            _, dt_pre = _timed(lambda: Prefilled(model, batch, True, pad, None))
            ratios.append(dt_sep / dt_tog)
            t_sep, t_tog, t_pre = t_sep + dt_sep, t_tog + dt_tog, t_pre + dt_pre
    n = len(prompts)
    median = statistics.median(ratios)
    print(f"separate {t_sep / n:.2f} s/user (the prefill alone {t_pre / n:.2f} s/user, twice in it), together "
          f"{t_tog / n:.2f} s/user; median of {len(ratios)} batches {median:.2f}x "
          f"(per batch {', '.join(f'{r:.2f}' for r in ratios)}), totals {t_sep / t_tog:.2f}x; results identical")
    print(f"RESULT both_softmaxes_speedup {median:.2f}")


if __name__ == "__main__":
    main()
