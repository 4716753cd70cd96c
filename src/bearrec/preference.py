"""Training data for the preference losses (dpo, sdpo, sdpo_bear; `bearrec.losses.preference`).

Each example becomes a group: the prompt with the positive title, then with N negatives sampled
uniformly from the catalogue (seeded per example by `loss.pref.negatives_seed`, never an item whose
title equals the target's; `dpo` takes one), or chosen by RosePO's strategies (`rosepo_negatives`).
Reference log-probabilities (the starting model's sequence log-probs of every group member) are
computed once before training and cached in `RUN/reference_logps.pt`, so training holds one model
and a resumed run reuses the starting model's values rather than recomputing them with trained
weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from bearrec.data.encode import Encoder
from bearrec.errors import BearrecError
from bearrec.losses.allowed import log_probs
from bearrec.ragged import segment_sum


def sample_negatives(targets: list[int], encoder: Encoder, num_negatives: int, seed: int) -> list[list[int]]:
    """`num_negatives` distinct item ids per example, uniform over items of another title."""
    catalogue = encoder.catalogue
    items = sorted(catalogue.titles)
    distinct = len({catalogue.title(i) for i in items})
    if num_negatives >= distinct:
        raise ValueError(f"loss.pref.num_negatives ({num_negatives}) must be below the number of distinct titles "
                         f"({distinct})")
    out = []
    for i, target in enumerate(targets):
        rng = random.Random(f"{seed}-{i}")
        title, chosen = catalogue.title(target), []
        while len(chosen) < num_negatives:
            item = items[rng.randrange(len(items))]
            if catalogue.title(item) != title and item not in chosen:
                chosen.append(item)
        out.append(chosen)
    return out


def constrained_decode(model, encoder: Encoder, rows, num_beams: int, batch_size: int, desc: str) -> list:
    """The model's `num_beams` best titles (`bearrec.decoding.Ranked`) for each row's history: the
    trie-constrained beam search in batches, in eval mode, without autocast."""
    from bearrec.decoding import beam_search

    was_training = model.training
    model.eval()
    prompts = [encoder.prompt_ids(r.history) for r in rows]
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
        out += beam_search(model, encoder.trie, prompts[start:start + batch_size], num_beams,
                           pad_token_id=encoder.tokenizer.pad_token_id or 0)
    model.train(was_training)
    return out


def rosepo_negatives(model, encoder: Encoder, rows, strategies: list[str], seed: int,
                     batch_size: int = 32) -> list[list[int]]:
    """One item id per strategy per example (RosePO's negatives, as reconstructed):
    - "self": the starting model's best-scoring title other than the target's, from a constrained
      beam search with B = 2 over the example's prompt (the greedy title where that is wrong);
    - "popular": a title trained on, drawn with probability proportional to its count among the
      examples' targets (seeded per example), never the target's title nor a title an earlier
      strategy chose for the example (so the negatives are distinct)."""
    catalogue, trie = encoder.catalogue, encoder.trie
    titles = [catalogue.title(r.target) for r in rows]
    out: list[list[int]] = [[] for _ in rows]
    for strategy in strategies:
        if strategy == "self":
            ranked = constrained_decode(model, encoder, rows, 2, batch_size, "rosepo self negatives")
            for i, r in enumerate(ranked):
                wrong = [n for n in r.nodes if catalogue.title(trie.items_at(n)[0]) != titles[i]]
                if not wrong:
                    raise BearrecError(f"rosepo: no title other than the target's came back for training row {i}")
                out[i].append(trie.items_at(wrong[0])[0])
        elif strategy == "popular":
            counts = Counter(titles)
            first_item: dict[str, int] = {}  # each title's item: its first row's target
            for r, t in zip(rows, titles):
                first_item.setdefault(t, r.target)
            if len(counts) < 3:
                raise BearrecError("rosepo: a popular negative needs at least three distinct training titles")
            names = sorted(counts)
            for i, t in enumerate(titles):
                rng = random.Random(f"{seed}-popular-{i}")
                taken = {t, *(catalogue.title(item) for item in out[i])}  # the target, and "self"'s title
                others = [n for n in names if n not in taken]
                out[i].append(first_item[rng.choices(others, weights=[counts[n] for n in others])[0]])
        else:
            raise BearrecError(f"rosepo: unknown negative strategy {strategy!r}")
    return out


class PreferenceSet(torch.utils.data.Dataset):
    """Wraps a `TrainingSet`: each item carries its negatives' target ids and trie nodes, and (once
    set) the group's reference log-probabilities."""

    def __init__(self, base, encoder: Encoder, negatives: list[list[int]]):
        self.base, self.negatives = base, negatives
        self.neg_ids = {i: encoder.target_ids(i) for group in negatives for i in group}
        self.neg_nodes = {i: encoder.trie.walk(ids) for i, ids in self.neg_ids.items()}
        self.reference: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        item["negatives"] = [(self.neg_ids[n], self.neg_nodes[n]) for n in self.negatives[i]]
        if self.reference is not None:
            item["reference"] = self.reference[i]
        return item


class PreferenceCollator:
    """Flattens each group (positive first, then negatives) into consecutive rows of the plain collator."""

    def __init__(self, collator):
        self.collator = collator
        self.pad_token_id = collator.pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        flat = []
        for f in features:
            flat.append(f)
            flat += [{"prompt_ids": f["prompt_ids"], "target_ids": ids, "nodes": nodes} for ids, nodes in f["negatives"]]
        batch = self.collator(flat)
        batch["group_size"] = 1 + len(features[0]["negatives"])
        if "reference" in features[0]:
            batch["reference"] = torch.stack([f["reference"] for f in features])
        return batch


@torch.no_grad()
def group_log_probs(model, batch: dict) -> torch.Tensor:
    """(E, G) vocabulary-softmax sequence log-probs of a collated preference batch."""
    device = next(model.parameters()).device
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                position_ids=batch["position_ids"].to(device), logits_to_keep=batch["logits_to_keep"], use_cache=False)
    logits = out.logits[batch["resp_rows"].to(device), batch["resp_cols"].to(device)]
    lp, _ = log_probs(logits, batch["targets"].to(device), None)
    group = batch["group_size"]
    rows = batch["resp_rows"].to(device)
    return segment_sum(lp, rows, len(batch["input_ids"])).view(-1, group).float().cpu()


def reference_log_probs(model, dataset: PreferenceSet, collator: PreferenceCollator, path: Path, key: dict,
                        batch_size: int = 16) -> torch.Tensor:
    """The starting model's (E, G) log-probs, loaded from `path` when it holds the same `key`."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
    if path.exists():
        try:  # weights_only explicitly: safe whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
            cached = torch.load(path, weights_only=True)
        except Exception as exc:
            raise BearrecError(f"{path}: refused (not a plain tensor file: {str(exc).splitlines()[0]}); delete it "
                               f"to recompute the reference log-probs") from None
        if isinstance(cached, dict) and cached.get("key") == digest:
            return cached["values"]
    was_training = model.training
    model.eval()
    chunks = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="reference log-probs", unit="batch"):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        chunks.append(group_log_probs(model, batch))
    model.train(was_training)
    values = torch.cat(chunks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"key": digest, "values": values}, tmp)
    tmp.replace(path)
    return values


def preference_data(cfg, run_dir: Path, model, encoder: Encoder, train_set, train_rows, collator,
                    negatives=None):
    """Preference methods: negatives per example (given, the method's own choice, or uniform samples)
    and the starting model's reference log-probs."""
    from bearrec import methods
    from bearrec.config import to_dict
    from bearrec.evaluation import distributed_state

    pref, method = cfg.loss.pref, methods.get(cfg.loss.name)
    n = method.num_negatives(cfg.loss)
    model.to(distributed_state().device)
    chosen = negatives is not None or method.negatives is not None
    if negatives is not None:  # given (sprec: decoded by the iteration's starting model)
        if len(negatives) != len(train_rows) or any(len(g) != n for g in negatives):
            raise BearrecError(f"{run_dir}: {len(negatives)} negative groups given for {len(train_rows)} rows, "
                               f"{n} each expected")
    elif method.negatives is not None:  # the method's own choice (rosepo: the starting model's decode, popularity)
        negatives = method.negatives(cfg, model, encoder, train_rows)
    else:
        negatives = sample_negatives([r.target for r in train_rows], encoder, n, pref.negatives_seed)
    data = PreferenceSet(train_set, encoder, negatives)
    collator = PreferenceCollator(collator)
    key = {"model": cfg.model.name_or_path, "data": to_dict(cfg.data), "n": n, "seed": pref.negatives_seed,
           "examples": len(train_rows), "max_train_examples": cfg.train.max_train_examples}
    if chosen:  # a cache of other negatives is not these groups' reference
        key["negatives"] = hashlib.sha1(json.dumps(negatives).encode()).hexdigest()
    data.reference = reference_log_probs(model, data, collator, run_dir / "reference_logps.pt", key,
                                         batch_size=cfg.train.batch_size)
    return data, collator
