"""Independent references for the decoder: Hugging Face `generate` with a trie
`prefix_allowed_tokens_fn`, and exhaustive teacher-forced scoring of every title.

Slow on purpose; used by tests and `benchmarks/decode.py` (the baseline there is `hf_beam_search`).
"""

from __future__ import annotations

import math

import torch

from bearrec.decoding import Ranked
from bearrec.trie import TitleTrie


class DictTrie:
    """Nested dicts over the same paths: the structure peers' code uses for prefix_allowed_tokens_fn."""

    def __init__(self, paths):
        self.root: dict = {}
        for path in paths:
            node = self.root
            for tok in path:
                node = node.setdefault(tok, {})

    def next_tokens(self, prefix) -> list[int]:
        node = self.root
        for tok in prefix:
            node = node.get(tok)
            if node is None:
                return []
        return sorted(node)


def _valid_log_softmax(scores: torch.Tensor, row: int, toks: torch.Tensor) -> None:
    """In place: row `row`'s log-probs of the valid tokens `toks` renormalised among them (the
    constrained softmax taken inside a processor, before what it changes)."""
    scores[row, toks] = scores[row, toks] - torch.logsumexp(scores[row, toks], 0)


class IgdScaling:
    """A `generate` logits processor: each valid child's log-prob times the weight of the trie node
    it leads to (IGD's decoding rule, written the way its authors' code applies it: after the
    log-softmax, per beam, by walking the beam's prefix). `constrained`: the log-softmax over the
    valid children is taken here, before the weights (`generate`'s `renormalize_logits` would
    renormalise after them)."""

    def __init__(self, trie: TitleTrie, token_weights: torch.Tensor, start: int, constrained: bool):
        self.trie, self.weights, self.start, self.constrained = trie, token_weights, start, constrained

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):
            node = self.trie.node_of(ids[self.start:])
            if node < 0:
                continue
            _, toks, children = self.trie.children(torch.tensor([node]))
            if self.constrained:
                _valid_log_softmax(scores, row, toks)
            for tok, child in zip(toks.tolist(), children.tolist()):
                scores[row, tok] = scores[row, tok] * float(self.weights[child])
        return scores


class ExcludeTitles:
    """A `generate` logits processor: the EOS that would end an excluded title scores -inf, after the
    log-softmax (`constrained`: over the valid children, taken here as `IgdScaling` does), so the
    title's probability stays in the normaliser, as in our decoder."""

    def __init__(self, trie: TitleTrie, excluded: set[tuple[int, ...]], start: int, constrained: bool):
        self.trie, self.excluded, self.start, self.constrained = trie, excluded, start, constrained

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores, eos = scores.clone(), self.trie.eos_token_id
        for row, ids in enumerate(input_ids.tolist()):
            prefix = tuple(ids[self.start:])
            node = self.trie.node_of(prefix)
            if node < 0:
                continue
            if self.constrained:
                _valid_log_softmax(scores, row, self.trie.children(torch.tensor([node]))[1])
            if (*prefix, eos) in self.excluded:
                scores[row, eos] = float("-inf")
        return scores


@torch.no_grad()
def hf_beam_search(model, trie: TitleTrie, prompts: list[list[int]], num_beams: int, *,
                   constrained_softmax: bool = True, length_penalty: float = 1.0, pad_token_id: int = 0,
                   token_weights: torch.Tensor | None = None,
                   excluded: list[set[tuple[int, ...]]] | None = None) -> list[Ranked]:
    """`generate` one prompt at a time (no padding). Placeholder / off-trie sequences are dropped.
    `token_weights`: IGD's rule through a logits processor (`IgdScaling`). `excluded`: per prompt,
    title paths whose EOS scores -inf after the softmax (`ExcludeTitles`)."""
    if excluded is not None and token_weights is not None:
        raise ValueError("the oracle applies IGD's weights or excluded titles, not both")
    from transformers import LogitsProcessorList

    dict_trie = DictTrie(set(trie.item_paths.values()))
    eos = trie.eos_token_id
    max_new = max(len(p) for p in trie.item_paths.values()) + 1
    results = []
    for p, prompt in enumerate(prompts):
        start = len(prompt)
        processors = [] if token_weights is None else [IgdScaling(trie, token_weights, start, constrained_softmax)]
        if excluded is not None:
            processors = [ExcludeTitles(trie, excluded[p], start, constrained_softmax)]

        def allowed(batch_id, input_ids):
            return dict_trie.next_tokens(input_ids[start:].tolist()) or [eos]

        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones((1, start), dtype=torch.long),
            num_beams=num_beams, num_return_sequences=num_beams, do_sample=False, early_stopping=False,
            length_penalty=length_penalty, max_new_tokens=max_new, prefix_allowed_tokens_fn=allowed,
            renormalize_logits=constrained_softmax and not processors, output_scores=True, output_logits=True,
            return_dict_in_generate=True, pad_token_id=pad_token_id, eos_token_id=eos, top_k=None, top_p=None,
            temperature=None, repetition_penalty=1.0,
            logits_processor=LogitsProcessorList(processors))
        if num_beams == 1:  # generate() runs greedy search: no sequences_scores, score it here
            scores = [_greedy_score(out, start, dict_trie, constrained_softmax, length_penalty)]
        else:
            scores = out.sequences_scores.tolist()
        ranked, seen = Ranked(), set()
        for seq, score in zip(out.sequences.tolist(), scores):
            gen = seq[start:]
            if eos not in gen:
                continue
            path = tuple(gen[: gen.index(eos) + 1])
            if not trie.contains(path) or path in seen or score < -1e8:
                continue
            seen.add(path)
            ranked.paths.append(path)
            ranked.scores.append(score)
            ranked.nodes.append(trie.node_of(path))
        results.append(ranked)
    return results


def _greedy_score(out, start: int, dict_trie: DictTrie, constrained: bool, length_penalty: float) -> float:
    gen = out.sequences[0, start:].tolist()
    total = 0.0
    for t, (tok, logits) in enumerate(zip(gen, out.logits)):
        row = logits[0].float()
        if constrained:
            total += float(row[tok] - torch.logsumexp(row[dict_trie.next_tokens(gen[:t])], 0))
        else:
            total += float(row.log_softmax(-1)[tok])
    return total / len(gen) ** length_penalty


@torch.no_grad()
def exhaustive_scores(model, trie: TitleTrie, prompt: list[int], *, constrained_softmax: bool = True,
                      length_penalty: float = 1.0, ghost_threshold: float | None = None,
                      token_weights: torch.Tensor | None = None) -> dict[tuple[int, ...], float]:
    """Teacher-forced score of every title path: sum of token log-probs / length ** lp, the length
    counting every token, or (`ghost_threshold`) those of probability below it (at least 1).
    `token_weights`: each log-prob times the weight of the node its token leads to (IGD)."""
    paths = sorted(set(trie.item_paths.values()))
    scores = {}
    for path in paths:
        ids = torch.tensor([prompt + list(path[:-1])])
        logits = model(ids).logits[0, len(prompt) - 1:].float()
        total, length = 0.0, 0
        for t, tok in enumerate(path):
            row = logits[t]
            if constrained_softmax:
                allowed = trie.next_tokens(path[:t])
                lp = row[tok] - torch.logsumexp(row[allowed], 0)
            else:
                lp = row.log_softmax(-1)[tok]
            weight = 1.0 if token_weights is None else float(token_weights[trie.node_of(path[:t + 1])])
            total += weight * float(lp)
            length += ghost_threshold is None or math.exp(float(lp)) < ghost_threshold
        scores[path] = total / max(length, 1) ** length_penalty
    return scores


def same_ranking(a: Ranked, b: Ranked, tol: float = 1e-4) -> bool:
    """Equal ranked paths and scores to `tol`; neighbours may swap only where their scores tie."""
    if len(a.paths) != len(b.paths) or any(abs(x - y) > tol for x, y in zip(a.scores, b.scores)):
        return False
    for i, (pa, pb) in enumerate(zip(a.paths, b.paths)):
        if pa != pb:
            tied = {p for p, s in zip(b.paths, b.scores) if abs(s - b.scores[i]) <= tol}
            if pa not in tied:
                return False
    return set(a.paths) == set(b.paths)
