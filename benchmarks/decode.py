"""Our constrained beam search vs Hugging Face `generate` with a trie `prefix_allowed_tokens_fn`.

Same model, prompts (Alpaca, seeded test users) and trie; rankings asserted equal in fp32 (scores
to 1e-4, swaps only between tied scores). Settings:
  (a) a tiny random Qwen2 with a 151,936-token vocabulary (Qwen-sized head) on Office titles,
  (b) SmolLM2-135M (packaged) on MovieLens-1M titles,
  (c) SmolLM2-135M on Office titles (the prompt of configs/office-smollm2.yaml: the last 5 titles).
Per batch of `--batch-size` users, ours (the batch at once) and the baseline (one user at a time: its
prefix function walks a nested-dict trie) run back to back, the one going first alternating from
batch to batch, so that load from other jobs falls on both alike. Reported: the median of the
per-batch ratios (baseline time / ours) and the ratio of the totals; `--reference` also times our
decoder without forced chains (`forced_chains=False`: every beam fed every step). The decoder's
counts (steps where every beam sat at a one-child trie node, forwards, tokens fed) come from
`DecodeStats`. One line per setting and B: `RESULT decode_speedup_b<B>_<setting> <median ratio>`.
The defaults took 10 minutes on one thread of a loaded 2-core machine (2026-11-30), nearly all of
it `generate`; `--settings` and the user counts shorten it.

    python benchmarks/decode.py [--settings a,b,c] [--users-a 40] [--users-b 16] [--users-c 8]
        [--beams 10] [--batch-size 8] [--reference] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time
from pathlib import Path

import torch

from bearrec.config import DataConfig, LoraConfig, ModelConfig, PromptConfig, TinyModelConfig
from bearrec.data.encode import Encoder
from bearrec.data.prompts import PromptTemplate
from bearrec.data.registry import load_dataset
from bearrec import decoding
from bearrec.evaluation import seeded_subset
from bearrec.modeling import build_tiny_model, load_model, train_bpe_tokenizer
from bearrec.oracles import hf_beam_search, same_ranking

SHARED = Path(os.environ.get("BEARREC_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
HAS_CHAINS = "forced_chains" in inspect.signature(decoding.beam_search).parameters  # older bearrec: no chains


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def compare(label, model, enc, users, beams, batch_size, pad_id, dtype, reference):
    prompts = [enc.prompt_ids(e.history) for e in users]
    autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else torch.autocast(model.device.type, enabled=False))
    tol = 1e-4 if dtype == "float32" else 2e-2
    medians = {}
    for b in beams:
        extra = {"stats": decoding.DecodeStats()} if HAS_CHAINS else {}
        ours_fn = lambda batch, **kw: decoding.beam_search(model, enc.trie, batch, b, pad_token_id=pad_id, **kw)
        with autocast:
            ours_fn(prompts[:2])  # warm-up
            ratios, t_ours, t_hf, t_ref, same, same_ref = [], 0.0, 0.0, 0.0, 0, 0
            for k, i in enumerate(range(0, len(prompts), batch_size)):
                batch = prompts[i:i + batch_size]
                runs = [lambda: ours_fn(batch, **extra), lambda: hf_beam_search(model, enc.trie, batch, b, pad_token_id=pad_id)]
                timed = [_timed(f) for f in (runs if k % 2 == 0 else runs[::-1])]
                (ours, dt_ours), (ref, dt_hf) = timed if k % 2 == 0 else timed[::-1]
                ratios.append(dt_hf / dt_ours)
                t_ours, t_hf = t_ours + dt_ours, t_hf + dt_hf
                same += sum(same_ranking(a, r, tol) for a, r in zip(ours, ref))
                if reference:
                    plain, dt_ref = _timed(lambda: ours_fn(batch, forced_chains=False))
                    t_ref += dt_ref
                    same_ref += sum(same_ranking(a, r, 1e-5) for a, r in zip(ours, plain))
        n = len(prompts)
        median = statistics.median(ratios)
        print(f"{label} B={b}: ours {t_ours / n:.3f} s/user, generate {t_hf / n:.3f} s/user; speedup median of "
              f"{len(ratios)} batches {median:.1f}x (per batch {', '.join(f'{r:.1f}' for r in ratios)}), "
              f"totals {t_hf / t_ours:.1f}x; identical rankings {same}/{n}")
        if reference:
            print(f"{label} B={b}: without forced chains {t_ref / n:.3f} s/user ({t_ref / t_ours:.2f}x ours); "
                  f"rankings equal to ours (1e-5) {same_ref}/{n}")
        if extra:
            s = extra["stats"]
            print(f"{label} B={b}: {s.steps} steps, {s.all_forced_steps} ({s.all_forced_steps / max(s.steps, 1):.0%}) "
                  f"with every beam at a one-child node; beams at one-child nodes "
                  f"{s.forced_beam_steps / max(s.beam_steps, 1):.0%} of {s.beam_steps}; {s.forwards} forwards after "
                  f"the prefill fed {s.tokens_fed} tokens ({s.tokens_fed / max(s.beam_steps, 1):.0%} of the beam-steps)")
        if dtype == "float32":
            assert same == n, "rankings differ from generate"
            assert not reference or same_ref == n, "forced chains changed a ranking"
        medians[b] = median
    return medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="a,b,c")
    ap.add_argument("--users-a", type=int, default=40)
    ap.add_argument("--users-b", type=int, default=16)
    ap.add_argument("--users-c", type=int, default=8)
    ap.add_argument("--beams", default="10")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reference", action="store_true", help="also time ours without forced chains")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady under other load)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    beams = [int(b) for b in args.beams.split(",")]
    settings = set(args.settings.split(","))
    run = dict(beams=beams, batch_size=args.batch_size, dtype=args.dtype, reference=args.reference and HAS_CHAINS)
    print(f"device {args.device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, forced chains {'yes' if HAS_CHAINS else 'absent'}")
    results = {}

    office = load_dataset(DataConfig(name="office", data_dir=str(SHARED))) if settings & {"a", "c"} else None
    if "a" in settings:  # tiny model, Qwen-sized vocabulary, Office titles
        template = PromptTemplate.from_config(PromptConfig(), "office")
        tok = train_bpe_tokenizer([*office.catalogue.unique_titles, template.render(["x"])], vocab_size=4000)
        tiny = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256)
        model = build_tiny_model(tiny, vocab_size=151_936, eos_token_id=tok.eos_token_id, seed=0).to(args.device).eval()
        enc = Encoder(tok, template, office.catalogue)
        users = [office.test[i] for i in seeded_subset(len(office.test), args.users_a, 0)]
        n_params = sum(p.numel() for p in model.parameters())
        print(f"(a) tiny Qwen2, {n_params / 1e6:.1f}M parameters, vocab 151,936; Office: {len(enc.trie)} titles, "
              f"{len(users)} users")
        results["a"] = compare("(a)", model, enc, users, pad_id=tok.pad_token_id, **run)

    if settings & {"b", "c"}:
        model, tok = load_model(ModelConfig(name_or_path="smollm2-135m", lora=LoraConfig(enabled=False)))
        model = model.to(args.device).eval()
    if "b" in settings:  # SmolLM2-135M, MovieLens-1M titles
        ml = load_dataset(DataConfig(name="movielens-1m"))
        enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(), ml.name), ml.catalogue)
        users = [ml.test[i] for i in seeded_subset(len(ml.test), args.users_b, 0)]
        print(f"(b) SmolLM2-135M; MovieLens-1M: {len(enc.trie)} titles, {len(users)} users")
        results["b"] = compare("(b)", model, enc, users, pad_id=tok.pad_token_id, **run)
    if "c" in settings:  # SmolLM2-135M, Office titles, configs/office-smollm2.yaml's prompt
        enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(template="alpaca", max_history_items=5), "office"),
                      office.catalogue)
        users = [office.test[i] for i in seeded_subset(len(office.test), args.users_c, 0)]
        lengths = [len(p) for p in enc.title_ids.values()]
        print(f"(c) SmolLM2-135M; Office: {len(enc.trie)} titles ({sum(lengths) / len(lengths) + 1:.1f} tokens each "
              f"with EOS), {len(users)} users")
        results["c"] = compare("(c)", model, enc, users, pad_id=tok.pad_token_id, **run)

    for setting, medians in results.items():
        for b, ratio in medians.items():
            print(f"RESULT decode_speedup_b{b}_{setting} {ratio:.2f}")


if __name__ == "__main__":
    main()
