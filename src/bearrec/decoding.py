"""Trie-constrained beam search with Hugging Face semantics, fast.

Semantics (identical to `transformers` `generate(num_beams=B, early_stopping=False,
length_penalty=lp, prefix_allowed_tokens_fn=<trie>, renormalize_logits=constrained_softmax)`):
- a step's token scores are log-softmax over the trie-valid children (`constrained_softmax`) or
  over the whole vocabulary; a beam's score is the sum of its token scores;
- per prompt the top 2B (beam, token) candidates are ranked; an EOS candidate among the first B
  finishes a hypothesis scored `sum / generated_length ** lp` (EOS counted); the best B non-EOS
  candidates continue;
- with `ghost_threshold`, tokens of probability >= it (D3's "ghost tokens") are left out of that
  length (default: all count);
- a prompt stops when its B finished slots are full and the best running beam, divided by the
  current length ** lp, cannot beat the worst finished one (Hugging Face's heuristic), or when no
  beam is left.
Hugging Face pads the first step with B-1 copies of the prompt scored -1e9; they can never outrank
a real hypothesis, so they are simply absent here: only real catalogue titles come back, distinct.

Speed, without changing results: each prompt is prefilled once (not B times) and its KV cache is
gathered to its live beams only; allowed tokens come from the trie arrays for all beams at once;
under `constrained_softmax` the LM head is computed only for the tokens some beam may emit.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from bearrec import prefix_attention
from bearrec.modeling import ModelError
from bearrec.trie import TitleTrie


@dataclass
class Ranked:
    """One prompt's result: hypotheses best first."""

    paths: list[tuple[int, ...]] = field(default_factory=list)  # token ids of '"title"' + EOS
    scores: list[float] = field(default_factory=list)  # HF `sequences_scores`
    nodes: list[int] = field(default_factory=list)  # trie terminals (-> item ids)


def _split_model(model):
    """(backbone, lm_head, full_logits_only) for a causal LM, a peft wrapper included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    backbone = getattr(base, base.base_model_prefix, None)
    head = base.get_output_embeddings()
    special = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
    if backbone is None or head is None or special or not isinstance(head, torch.nn.Linear):
        return base, None, True
    return backbone, head, False


class _Scorer:
    """Last-position hidden states -> log-probabilities of the trie children of each beam."""

    def __init__(self, model, constrained_softmax: bool):
        self.model = model
        self.device = next(model.parameters()).device
        self.backbone, self.head, self.full_only = _split_model(model)
        self.constrained = constrained_softmax

    def forward(self, input_ids, attention_mask, position_ids, cache):
        input_ids, attention_mask, position_ids = (t.to(self.device) for t in (input_ids, attention_mask, position_ids))
        if self.full_only:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                cache=cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1].float(), out.cache
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1], out.cache

    def child_log_probs(self, state: torch.Tensor, rows: torch.Tensor, toks: torch.Tensor,
                        counts: torch.Tensor) -> torch.Tensor:
        """`state`: hidden states (or full logits); children flat (row, token). Returns float32 log-probs
        on the CPU, where the beam bookkeeping lives."""
        rows, toks, counts = rows.to(self.device), toks.to(self.device), counts.to(self.device)
        return self._child_log_probs(state, rows, toks, counts).cpu()

    def _child_log_probs(self, state, rows, toks, counts):
        if self.full_only or not self.constrained:
            logits = state.float() if self.full_only else self.head(state).float()
            if self.constrained:
                return _segment_log_softmax(logits[rows, toks], rows, counts)
            return logits.log_softmax(-1)[rows, toks]
        uniq, inverse = torch.unique(toks, return_inverse=True)
        weight = self.head.weight[uniq]
        sub = state @ weight.T
        if self.head.bias is not None:
            sub = sub + self.head.bias[uniq]
        return _segment_log_softmax(sub.float()[rows, inverse], rows, counts)


def _segment_log_softmax(values: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """log-softmax within each group of consecutive entries (group sizes `counts`)."""
    n, width = len(counts), int(counts.max()) if len(counts) else 0
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.arange(len(values), device=values.device) - starts[rows]
    padded = torch.full((n, width), float("-inf"), dtype=values.dtype, device=values.device)
    padded[rows, offsets] = values
    return values - torch.logsumexp(padded, dim=1)[rows]


class _Prefilled:
    """Prompts prefilled once (left padding) and the cache their continuations extend: the shared-
    prefix cache where the architecture allows, else Hugging Face's. `advance` feeds one token to
    each live row; rows are reordered from their parents first."""

    def __init__(self, model, prompts: list[list[int]], constrained_softmax: bool, pad_token_id: int,
                 shared_prefix: bool | None):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.model, self.scorer = model, _Scorer(model, constrained_softmax)
        n, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
        self.prompt_mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            input_ids[i, width - len(p):] = torch.as_tensor(p)
            self.prompt_mask[i, width - len(p):] = 1
        self.prompt_len = self.prompt_mask.sum(1)
        positions = (self.prompt_mask.cumsum(1) - 1).clamp(min=0)
        self.state, self.cache = self.scorer.forward(input_ids, self.prompt_mask, positions, None)
        self.shared = prefix_attention.supports(model) if shared_prefix is None else shared_prefix
        if self.shared:
            self.cache = prefix_attention.SharedPrefixCache(self.cache, self.prompt_mask)

    def attention(self):
        """Context in which `advance` must run (routes attention to the shared-prefix kernel)."""
        return prefix_attention.active(self.model, self.cache) if self.shared else nullcontext()

    def advance(self, parent: torch.Tensor, row_prompt: torch.Tensor, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Rows `parent` (of the previous rows) each take `tokens`; `step` tokens generated so far,
        this one included. Returns the new last-position states."""
        self.cache.reorder_cache(parent)
        if self.shared:
            self.cache.set_beams(row_prompt)
            attn = torch.zeros((len(parent), 1, 1, 1))  # 4-D: the model skips mask building; unused
        else:
            attn = torch.cat([self.prompt_mask[row_prompt], torch.ones((len(parent), step), dtype=torch.long)], dim=1)
        pos = (self.prompt_len[row_prompt] + step - 1)[:, None]
        self.state, self.cache = self.scorer.forward(tokens[:, None], attn, pos, self.cache)
        return self.state


@torch.no_grad()
def beam_search(model, trie: TitleTrie, prompts: list[list[int]], num_beams: int, *,
                constrained_softmax: bool = True, length_penalty: float = 1.0, pad_token_id: int = 0,
                shared_prefix: bool | None = None, ghost_threshold: float | None = None) -> list[Ranked]:
    """Decode a batch of prompts (token ids). Returns, per prompt, up to `num_beams` distinct titles.

    `shared_prefix`: keep the prompt's KV once per user (`bearrec.prefix_attention`); None: where
    the architecture supports it. `ghost_threshold`: tokens generated with probability >= it
    ("ghost tokens", D3) do not count in the length of `sum log-prob / length ** length_penalty`
    (None: every token counts, Hugging Face's rule)."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if ghost_threshold is not None and not 0 < ghost_threshold <= 1:
        raise ValueError(f"ghost_threshold must be in (0, 1], got {ghost_threshold}")
    run = _Prefilled(model, prompts, constrained_softmax, pad_token_id, shared_prefix)
    with run.attention():
        return _decode_loop(run, trie, num_beams, length_penalty, ghost_threshold)


@torch.no_grad()
def prefix_thresholds(model, trie: TitleTrie, prompts: list[list[int]], num_beams: int, *,
                      constrained_softmax: bool = True, pad_token_id: int = 0) -> list[list[float]]:
    """Per prompt, per step t = 1, 2, ...: the prefix log-probability of the candidate ranked B-th
    at step t of the beam search (the score a length-t prefix must reach to stay in the top B);
    -inf where fewer than B candidates exist. A prompt's list ends when its search stops. Used by
    the `beam_sim` loss (the paper's Objective 3.1)."""
    run = _Prefilled(model, prompts, constrained_softmax, pad_token_id, None)
    record: list[list[float]] = [[] for _ in prompts]
    with run.attention():
        _decode_loop(run, trie, num_beams, 1.0, record=record)
    return record


def _decode_loop(run: _Prefilled, trie: TitleTrie, B: int, length_penalty: float,
                 ghost_threshold: float | None = None, record: list[list[float]] | None = None) -> list[Ranked]:
    n, eos, scorer, state = len(run.prompt_len), trie.eos_token_id, run.scorer, run.state

    # live beams, grouped by prompt and in rank order within a prompt
    beam_prompt = torch.arange(n)
    beam_node = torch.zeros(n, dtype=torch.long)
    beam_score = torch.zeros(n)
    beam_tokens = torch.zeros((n, 0), dtype=torch.long)
    beam_len = torch.zeros(n)  # the length that normalises: all tokens, or the non-ghost ones
    log_ghost = math.log(ghost_threshold) if ghost_threshold is not None else None
    finished: list[list[tuple[float, tuple[int, ...], int]]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool)
    step = 0
    while len(beam_prompt):
        counts, toks, children = trie.children(beam_node)
        rows = torch.repeat_interleave(torch.arange(len(counts)), counts)
        step_lp = scorer.child_log_probs(state, rows, toks, counts)
        if bool(torch.isnan(step_lp).any()):
            raise ModelError("the model's next-token log-probabilities are NaN (NaN weights or a diverged "
                             "training run?): nothing can be ranked")
        acc = beam_score[rows] + step_lp
        cand_len = beam_len[rows] + (1.0 if log_ghost is None else (step_lp < log_ghost).float())
        cand_prompt = beam_prompt[rows]
        # per-prompt candidate lists in (beam rank, token) order, as HF's flattened beam * vocab index
        per_prompt = torch.bincount(cand_prompt, minlength=n)
        first = torch.cumsum(per_prompt, 0) - per_prompt
        slot = torch.arange(len(acc)) - first[cand_prompt]
        table = torch.full((n, int(per_prompt.max()) if len(acc) else 1), float("-inf"))
        table[cand_prompt, slot] = acc
        k = min(2 * B, table.shape[1])
        top_scores, top_slots = table.topk(k, dim=1)
        top_idx = (first[:, None] + top_slots).clamp(max=max(len(acc) - 1, 0))
        valid = torch.isfinite(top_scores)
        if record is not None:
            bth = top_scores[:, B - 1] if k >= B else torch.full((n,), float("-inf"))
            for p in range(n):
                if not done[p]:
                    record[p].append(float(bth[p]))
        is_eos = valid & (toks[top_idx] == eos) if len(acc) else valid
        norm = cand_len[top_idx].clamp(min=1.0) ** length_penalty if len(acc) else torch.ones_like(top_scores)
        rank = torch.arange(k)[None, :]
        finishing = is_eos & (rank < B)
        for p, j in finishing.nonzero().tolist():
            i = int(top_idx[p, j])
            r = int(rows[i])
            entry = (float(top_scores[p, j] / norm[p, j]), (*beam_tokens[r].tolist(), eos), int(children[i]))
            finished[p] = sorted(finished[p] + [entry], key=lambda e: -e[0])[:B]
        running = valid & ~is_eos
        running &= (running.cumsum(1) <= B)
        # Hugging Face's stopping heuristic, per prompt
        best = torch.where(running, top_scores / norm, torch.tensor(float("-inf"))).max(dim=1).values
        for p in range(n):
            if done[p]:
                continue
            full = len(finished[p]) == B
            if not bool(running[p].any()) or (full and float(best[p]) <= finished[p][-1][0]):
                done[p] = True
        running &= ~done[:, None]
        sel_p, sel_j = running.nonzero(as_tuple=True)
        if len(sel_p) == 0:
            break
        cand = top_idx[sel_p, sel_j]
        parent = rows[cand]
        beam_prompt, beam_node, beam_score = sel_p, children[cand], top_scores[sel_p, sel_j]
        beam_len = cand_len[cand]
        new_tok = toks[cand]
        beam_tokens = torch.cat([beam_tokens[parent], new_tok[:, None]], dim=1)
        step += 1
        state = run.advance(parent, beam_prompt, new_tok, step)  # cache rows follow the live beams
    return [Ranked([e[1] for e in f], [e[0] for e in f], [e[2] for e in f]) for f in finished]
