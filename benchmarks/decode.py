"""Our constrained beam search vs Hugging Face `generate` with a trie `prefix_allowed_tokens_fn`.

Same model, prompts (Alpaca, test users) and trie; both in one run; rankings asserted equal
(scores to 1e-4, swaps only between tied scores). Prints seconds per user and the ratio for
B = 10 and 20 on
  (a) a tiny random model with a 151,936-token vocabulary (Qwen-sized head) on Office titles, and
  (b) SmolLM2-135M (packaged) on MovieLens-1M titles.
The baseline runs one user at a time (its prefix function walks a nested-dict trie); ours batches
`--batch-size` users. The last line is `RESULT decode_speedup_b10 <ratio for (b)>`.

    python benchmarks/decode.py [--users-a 40] [--users-b 8] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from bearrec.config import DataConfig, ModelConfig, LoraConfig, PromptConfig, TinyModelConfig
from bearrec.data.encode import Encoder
from bearrec.data.prompts import PromptTemplate
from bearrec.data.registry import load_dataset
from bearrec.decoding import beam_search
from bearrec.evaluation import seeded_subset
from bearrec.modeling import build_tiny_model, load_model, train_bpe_tokenizer
from bearrec.oracles import hf_beam_search, same_ranking

SHARED = Path(os.environ.get("BEARREC_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def compare(label, model, enc, users, beams, batch_size, pad_id, dtype):
    prompts = [enc.prompt_ids(e.history) for e in users]
    autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else torch.autocast(model.device.type, enabled=False))
    ratios = {}
    for b in beams:
        with autocast:
            beam_search(model, enc.trie, prompts[:2], b, pad_token_id=pad_id)  # warm-up
            t = time.perf_counter()
            ours = []
            for i in range(0, len(prompts), batch_size):
                ours += beam_search(model, enc.trie, prompts[i:i + batch_size], b, pad_token_id=pad_id)
            t_ours = (time.perf_counter() - t) / len(prompts)
            t = time.perf_counter()
            ref = hf_beam_search(model, enc.trie, prompts, b, pad_token_id=pad_id)
            t_hf = (time.perf_counter() - t) / len(prompts)
        tol = 1e-4 if dtype == "float32" else 2e-2
        same = sum(same_ranking(a, r, tol) for a, r in zip(ours, ref))
        print(f"{label} B={b}: ours {t_ours:.3f} s/user, generate {t_hf:.3f} s/user, speedup {t_hf / t_ours:.1f}x; "
              f"identical rankings {same}/{len(prompts)}")
        if dtype == "float32":
            assert same == len(prompts), "rankings differ from generate"
        ratios[b] = t_hf / t_ours
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users-a", type=int, default=40)
    ap.add_argument("--users-b", type=int, default=8)
    ap.add_argument("--beams", default="10,20")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    beams = [int(b) for b in args.beams.split(",")]
    print(f"device {args.device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}")

    # (a) tiny model, Qwen-sized vocabulary, Office titles
    office = load_dataset(DataConfig(name="office", data_dir=str(SHARED)))
    template = PromptTemplate.from_config(PromptConfig(), "office")
    tok = train_bpe_tokenizer([*office.catalogue.unique_titles, template.render(["x"])], vocab_size=4000)
    tiny = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256)
    model = build_tiny_model(tiny, vocab_size=151_936, eos_token_id=tok.eos_token_id, seed=0).to(args.device).eval()
    enc = Encoder(tok, template, office.catalogue)
    users = [office.test[i] for i in seeded_subset(len(office.test), args.users_a, 0)]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"(a) tiny Qwen2, {n_params / 1e6:.1f}M parameters, vocab 151,936; Office: {len(enc.trie)} titles, "
          f"{len(users)} users")
    compare("(a)", model, enc, users, beams, args.batch_size, tok.pad_token_id, args.dtype)

    # (b) SmolLM2-135M, MovieLens-1M titles
    ml = load_dataset(DataConfig(name="movielens-1m"))
    model, tok = load_model(ModelConfig(name_or_path="smollm2-135m", lora=LoraConfig(enabled=False)))
    model = model.to(args.device).eval()
    enc = Encoder(tok, PromptTemplate.from_config(PromptConfig(), ml.name), ml.catalogue)
    users = [ml.test[i] for i in seeded_subset(len(ml.test), args.users_b, 0)]
    print(f"(b) SmolLM2-135M; MovieLens-1M: {len(enc.trie)} titles, {len(users)} users")
    ratios = compare("(b)", model, enc, users, beams, args.batch_size, tok.pad_token_id, args.dtype)
    print(f"RESULT decode_speedup_b10 {ratios.get(10, float('nan')):.2f}")


if __name__ == "__main__":
    main()
