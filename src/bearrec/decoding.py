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
- with `token_weights` (IGD's decoding rule, `bearrec.popularity.TargetCounts.decoding_weights`),
  each token's log-prob is multiplied by the weight of the trie node it leads to before it is added
  to the beam's score (the length and ghost tokens still read the unweighted probability);
- a prompt stops when its B finished slots are full and the best running beam, divided by the
  current length ** lp, cannot beat the worst finished one (Hugging Face's heuristic), or when no
  beam is left.
Hugging Face pads the first step with B-1 copies of the prompt scored -1e9; they can never outrank
a real hypothesis, so they are simply absent here: only real catalogue titles come back, distinct.

Speed, without changing results (`bearrec.feeding`, `bearrec.chains`): each prompt is prefilled
once (not B times), the batch's common prefix (the template) once for all; a beam's generated
tokens are kept apart from its prompt's KV (`bearrec.prefix_attention`); allowed tokens come from
the trie arrays for all beams at once; under `constrained_softmax` the LM head is computed only for
the tokens some beam may emit, and a beam at a trie node with one child is scored log 1 = 0 without
the model and fed its waiting tokens in one forward when it next branches; under the full softmax a
run of steps where every beam's next token is forced is computed in one forward. Results equal the
one-step-at-a-time schedule (`forced_chains=False`) to float rounding (chunked forwards sum in
another order: scores agree to ~2e-7 with SmolLM2 on Office, tested to 1e-5). Searches of the same
prompts under both softmaxes (`beam_search_softmaxes`) share one prefill (`Prefilled.fork`).

The search reads top to bottom in `_decode`: `Prefilled` (prefill the prompts), then per step
`_score_children` (every live beam's trie children and their scores; the model runs only where
needed), `_select` (each prompt's top 2B candidates; an `on_select` hook may observe them, as
`prefix_thresholds` does), `_finish` (EOS candidates become hypotheses; prompts that cannot improve
stop) and `_reorder` (the continuing candidates become the next beams; the cache follows them at the
next forward).

Host synchronisations per step (shared-prefix cache; the bookkeeping above is all on the host):
none at a step where no beam needs the model (every beam at a one-child node under the constrained
softmax, or inside a forced chain under the full one); one where the model runs: the copy of the
children's log-probabilities to the host. The index tensors go to the device in pinned,
non-blocking copies; the attention kernel has no data-dependent shapes. With Hugging Face's cache
(architectures `prefix_attention` does not support) every step runs the model and its mask code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from bearrec import chains, ragged
from bearrec.feeding import Prefilled
from bearrec.modeling import ModelError
from bearrec.trie import TitleTrie

__all__ = ["Ranked", "Prefilled", "DecodeStats", "beam_search", "beam_search_softmaxes", "prefix_thresholds",
           "BthCandidateScores"]


@dataclass
class Ranked:
    """One prompt's result: hypotheses best first."""

    paths: list[tuple[int, ...]] = field(default_factory=list)  # token ids of '"title"' + EOS
    scores: list[float] = field(default_factory=list)  # HF `sequences_scores`
    nodes: list[int] = field(default_factory=list)  # trie terminals (-> item ids)


# An `on_select` hook: called once per step with each prompt's top candidate scores (prompts x k,
# best first, -inf where a prompt has fewer than k) and which prompts are still searching.
SelectHook = Callable[[torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def beam_search(model, trie: TitleTrie, prompts: list[list[int]], num_beams: int, *,
                constrained_softmax: bool = True, length_penalty: float = 1.0, pad_token_id: int = 0,
                shared_prefix: bool | None = None, ghost_threshold: float | None = None,
                token_weights: torch.Tensor | None = None, forced_chains: bool = True,
                stats: "DecodeStats | None" = None, excluded: list[list[int]] | None = None) -> list[Ranked]:
    """Decode a batch of prompts (token ids). Returns, per prompt, up to `num_beams` distinct titles.

    `shared_prefix`: keep the prompt's KV once per user (`bearrec.prefix_attention`); None: where
    the architecture supports it. `ghost_threshold`: tokens generated with probability >= it
    ("ghost tokens", D3) do not count in the length of `sum log-prob / length ** length_penalty`
    (None: every token counts, Hugging Face's rule). `token_weights`: per trie node, the factor on
    the log-prob of the token leading to it (IGD; None: 1). `forced_chains`: False feeds every beam every
    step (the reference schedule, for tests and benchmarks; same results to float rounding).
    `stats`: filled with step and forward counts. `excluded`: per prompt, terminal trie nodes (titles)
    never returned: their EOS candidate scores -inf, so it neither finishes nor takes a beam's place,
    and no other score changes (e.g. the titles of the user's history; None: none)."""
    return beam_search_softmaxes(model, trie, prompts, num_beams, (constrained_softmax,), length_penalty=length_penalty,
                                 pad_token_id=pad_token_id, shared_prefix=shared_prefix,
                                 ghost_threshold=ghost_threshold, token_weights=token_weights,
                                 forced_chains=forced_chains, stats=stats, excluded=excluded)[0]


@torch.no_grad()
def beam_search_softmaxes(model, trie: TitleTrie, prompts: list[list[int]], num_beams: int,
                          softmaxes: tuple[bool, ...], *, length_penalty: float = 1.0, pad_token_id: int = 0,
                          shared_prefix: bool | None = None, ghost_threshold: float | None = None,
                          token_weights: torch.Tensor | None = None, forced_chains: bool = True,
                          stats: "DecodeStats | None" = None,
                          excluded: list[list[int]] | None = None) -> list[list[Ranked]]:
    """`beam_search` once per entry of `softmaxes` (its `constrained_softmax`: True over the trie-valid
    tokens, False over the vocabulary), everything else alike: one list of results per entry, each
    equal to `beam_search`'s. With the shared-prefix cache the prompts are prefilled once for all of
    them (`Prefilled.fork`), else once per entry. `stats` counts every search."""
    if not softmaxes:
        raise ValueError("softmaxes names no search")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if ghost_threshold is not None and not 0 < ghost_threshold <= 1:
        raise ValueError(f"ghost_threshold must be in (0, 1], got {ghost_threshold}")
    if token_weights is not None and token_weights.shape != (trie.num_nodes,):
        raise ValueError(f"token_weights must hold one weight per trie node ({trie.num_nodes}), "
                         f"got shape {tuple(token_weights.shape)}")
    if token_weights is not None:  # callers build them on the host; the scores live on the model's device
        token_weights = token_weights.to(next(model.parameters()).device)
    if excluded is not None and len(excluded) != len(prompts):
        raise ValueError(f"excluded names titles for {len(excluded)} prompts, not {len(prompts)}")
    banned = ragged.padded(torch.tensor([n for e in excluded for n in e], dtype=torch.long),
                           torch.tensor([len(e) for e in excluded]), -1, min_width=1) if excluded else None
    first = Prefilled(model, prompts, softmaxes[0], pad_token_id, shared_prefix)
    forks = [first.fork(s) for s in softmaxes[1:]] if first.shared else None  # before the first search writes
    out = []
    for i, softmax in enumerate(softmaxes):
        run = first if i == 0 else forks[i - 1] if forks is not None else Prefilled(
            model, prompts, softmax, pad_token_id, shared_prefix)
        with run.attention():
            out.append(_decode(run, trie, num_beams, length_penalty, ghost_threshold, forced_chains=forced_chains,
                               stats=stats, token_weights=token_weights, banned=banned))
    return out


@torch.no_grad()
def prefix_thresholds(model, trie: TitleTrie, prompts: list[list[int]], num_beams: int, *,
                      constrained_softmax: bool = True, pad_token_id: int = 0,
                      forced_chains: bool = True) -> list[list[float]]:
    """Per prompt, per step t = 1, 2, ...: the prefix log-probability of the candidate ranked B-th
    at step t of the beam search (the score a length-t prefix must reach to stay in the top B);
    -inf where fewer than B candidates exist. A prompt's list ends when its search stops. Used by
    the `beam_sim` loss (the paper's Objective 3.1)."""
    run = Prefilled(model, prompts, constrained_softmax, pad_token_id, None)
    recorder = BthCandidateScores(len(prompts), num_beams)
    with run.attention():
        _decode(run, trie, num_beams, 1.0, on_select=recorder, forced_chains=forced_chains)
    return recorder.per_prompt


class BthCandidateScores:
    """`on_select` hook of `prefix_thresholds`: appends, for every prompt still searching, the
    score of its B-th candidate at this step (-inf where it has fewer than B)."""

    def __init__(self, num_prompts: int, num_beams: int):
        self.num_beams = num_beams
        self.per_prompt: list[list[float]] = [[] for _ in range(num_prompts)]

    def __call__(self, top_scores: torch.Tensor, searching: torch.Tensor) -> None:
        B = self.num_beams
        bth = top_scores[:, B - 1] if top_scores.shape[1] >= B else torch.full((len(top_scores),), float("-inf"))
        for p in searching.nonzero()[:, 0].tolist():
            self.per_prompt[p].append(float(bth[p]))


@dataclass
class DecodeStats:
    """Counts of one or more searches (`beam_search(stats=...)` adds to them)."""

    steps: int = 0  # decoding steps (each ranks every live beam's trie children)
    all_forced_steps: int = 0  # steps where every live beam of every prompt had exactly one child
    beam_steps: int = 0  # live beams summed over steps
    forced_beam_steps: int = 0  # of them, at a node with one child
    forwards: int = 0  # model forwards after the prefill
    tokens_fed: int = 0  # generated tokens those forwards fed

    def count(self, counts: torch.Tensor) -> None:
        forced = int((counts == 1).sum())
        self.steps, self.beam_steps, self.forced_beam_steps = self.steps + 1, self.beam_steps + len(counts), \
            self.forced_beam_steps + forced
        self.all_forced_steps += forced == len(counts)


# ---- the search, stage by stage ----------------------------------------------------------------
@dataclass
class _Beams:
    """Live beams, grouped by prompt and in rank order within a prompt."""

    prompt: torch.Tensor  # (M,) the prompt each beam extends
    node: torch.Tensor  # (M,) trie node reached
    score: torch.Tensor  # (M,) sum of token log-probs
    tokens: torch.Tensor  # (M, steps) generated token ids
    length: torch.Tensor  # (M,) the length that normalises: all tokens, or the non-ghost ones
    row: torch.Tensor  # (M,) its row in the model's cache (rows are gathered when the model is next run)
    fed: torch.Tensor  # (M,) how many of its tokens the cache holds (the rest wait for a forward)
    ahead: torch.Tensor  # (M, j) log-probs of its next j forced tokens, computed in a chain's forward

    @classmethod
    def start(cls, num_prompts: int) -> "_Beams":
        """One empty beam per prompt, at the trie root."""
        n, long = num_prompts, dict(dtype=torch.long)
        return cls(torch.arange(n), torch.zeros(n, **long), torch.zeros(n), torch.zeros((n, 0), **long), torch.zeros(n),
                   torch.arange(n), torch.zeros(n, **long), torch.zeros((n, 0)))


@dataclass
class _Candidates:
    """Every live beam's trie children, flat in (beam, token) order: Hugging Face's flattened
    beam * vocabulary order, restricted to the trie."""

    beam: torch.Tensor  # the beam each candidate extends
    prompt: torch.Tensor  # its prompt (grouped: beams are)
    token: torch.Tensor
    node: torch.Tensor  # the trie node it reaches
    score: torch.Tensor  # the beam's score + the token's log-prob
    length: torch.Tensor  # the beam's length + this token's (1, or 0 for a ghost token)


@dataclass
class _Top:
    """Each prompt's best k = min(2B, most candidates of a prompt) candidates, best first."""

    scores: torch.Tensor  # (prompts, k), -inf where a prompt has fewer
    index: torch.Tensor  # (prompts, k) into the flat candidates (clamped where invalid)
    valid: torch.Tensor  # (prompts, k) a real candidate


class _Hypotheses:
    """Finished hypotheses per prompt (the best B, best first) and the prompts whose search stopped."""

    def __init__(self, num_prompts: int, num_beams: int):
        self.num_beams = num_beams
        self.finished: list[list[tuple[float, tuple[int, ...], int]]] = [[] for _ in range(num_prompts)]
        self.done = torch.zeros(num_prompts, dtype=torch.bool)

    def add(self, p: int, score: float, path: tuple[int, ...], node: int) -> None:
        self.finished[p] = sorted(self.finished[p] + [(score, path, node)], key=lambda e: -e[0])[:self.num_beams]

    def stop(self, running: torch.Tensor, best: torch.Tensor) -> None:
        """Hugging Face's stopping heuristic: a prompt is done when no candidate continues, or when
        its B slots are full and its best continuing score `best` cannot beat the worst finished one."""
        for p, finished in enumerate(self.finished):
            if self.done[p]:
                continue
            full = len(finished) == self.num_beams
            if not bool(running[p].any()) or (full and float(best[p]) <= finished[-1][0]):
                self.done[p] = True

    def ranked(self) -> list[Ranked]:
        return [Ranked([e[1] for e in f], [e[0] for e in f], [e[2] for e in f]) for f in self.finished]


def _decode(run: Prefilled, trie: TitleTrie, B: int, length_penalty: float, ghost_threshold: float | None = None,
            on_select: SelectHook | None = None, forced_chains: bool = True,
            stats: DecodeStats | None = None, token_weights: torch.Tensor | None = None,
            banned: torch.Tensor | None = None) -> list[Ranked]:
    """The beam search over prefilled prompts (runs inside `run.attention()`); `banned`: (prompts, w)
    terminal nodes each prompt never returns, -1 padded."""
    n = len(run.prompt_len)
    log_ghost = math.log(ghost_threshold) if ghost_threshold is not None else None
    beams, hypotheses = _Beams.start(n), _Hypotheses(n, B)
    lazy = forced_chains and run.scorer.constrained and run.shared
    chain = forced_chains and not run.scorer.constrained and run.shared
    while len(beams.prompt):
        candidates = _score_children(run, trie, beams, log_ghost, lazy, chain, stats, token_weights)
        if banned is not None:
            hit = (banned[candidates.prompt] == candidates.node[:, None]).any(1)
            candidates.score = candidates.score.masked_fill(hit, float("-inf"))
        top = _select(candidates, n, B)
        if on_select is not None:
            on_select(top.scores, ~hypotheses.done)
        running = _finish(top, candidates, beams, hypotheses, trie.eos_token_id, length_penalty)
        if not bool(running.any()):
            break
        beams = _reorder(top, running, candidates, beams)
    return hypotheses.ranked()


def _score_children(run: Prefilled, trie: TitleTrie, beams: _Beams, log_ghost: float | None, lazy: bool,
                    chain: bool, stats: DecodeStats | None = None,
                    token_weights: torch.Tensor | None = None) -> _Candidates:
    """Score stage: every live beam's trie children, each scored beam score + the token's log-prob
    (under the constrained or the full softmax) and its normalising length. Which beams the model
    runs on, and when, is `bearrec.chains`'s: `lazy` (constrained softmax) scores a one-child node
    log 1 = 0 unfed; `chain` (full softmax) computes a run of all-forced steps in one forward."""
    counts, toks, children = trie.children(beams.node)
    rows = ragged.segment_ids(counts)
    if stats is not None:
        stats.count(counts)
    step_lp = _model_log_probs(run, trie, beams, counts, rows, toks, lazy, chain, stats)
    if bool(torch.isnan(step_lp).any()):
        raise ModelError("the model's next-token log-probabilities are NaN (NaN weights or a diverged "
                         "training run?): nothing can be ranked")
    length = beams.length[rows] + (1.0 if log_ghost is None else (step_lp < log_ghost).float())
    if token_weights is not None:
        step_lp = step_lp * token_weights[children]
    return _Candidates(rows, beams.prompt[rows], toks, children, beams.score[rows] + step_lp, length)


def _model_log_probs(run: Prefilled, trie: TitleTrie, beams: _Beams, counts, rows, toks, lazy: bool, chain: bool,
                     stats: DecodeStats | None) -> torch.Tensor:
    """Log-probs of the children: from a running chain, or fed beams' states (0 for the others)."""
    steps = beams.tokens.shape[1]
    if beams.ahead.shape[1]:  # inside a chain: every beam has one child, its log-prob computed
        step_lp, beams.ahead = beams.ahead[:, 0], beams.ahead[:, 1:]
        return step_lp
    forced = chains.plan(trie, beams.node, counts) if chain and steps else None
    if forced is not None:  # every beam feeds its waiting token and the next k - 1 forced ones
        m, k = forced.shape
        need = torch.arange(m)
        states = run.feed(beams.row, beams.prompt, torch.cat([beams.tokens, forced[:, :-1]], 1), beams.fed, need,
                          steps + k - 1, keep=k).view(m, k, -1)
        _count_feed(stats, steps + k - 1 - beams.fed)
        beams.row, beams.fed = need, torch.full((m,), steps + k - 1)
        one = torch.ones(m, dtype=torch.long)
        ahead = torch.stack([run.scorer.child_log_probs(states[:, j], need, forced[:, j], one, host=False)
                             for j in range(k)], dim=1).cpu()  # one copy to the host for the k steps
        beams.ahead = ahead[:, 1:]
        return ahead[:, 0]
    needs = chains.needs_state(counts, lazy)
    need = needs.nonzero()[:, 0]
    step_lp = torch.zeros(len(toks))
    if len(need):
        states = run.feed(beams.row, beams.prompt, beams.tokens, beams.fed, need, steps)
        if steps:
            _count_feed(stats, steps - beams.fed[need])
        beams.row, beams.fed[need] = torch.arange(len(counts)), steps
        scored = needs[rows]
        place = needs.cumsum(0) - 1  # each needing beam's row among the states
        step_lp[scored] = run.scorer.child_log_probs(states, place[rows[scored]], toks[scored], counts[need])
    return step_lp


def _count_feed(stats: DecodeStats | None, tokens: torch.Tensor) -> None:
    if stats is not None:
        stats.forwards, stats.tokens_fed = stats.forwards + 1, stats.tokens_fed + int(tokens.sum())


def _select(candidates: _Candidates, n: int, B: int) -> _Top:
    """Select stage: each prompt's top 2B candidates (fewer where it has fewer), as Hugging Face
    ranks its flattened beam * vocabulary scores."""
    per_prompt = torch.bincount(candidates.prompt, minlength=n)
    table = ragged.padded(candidates.score, per_prompt, float("-inf"), ids=candidates.prompt, min_width=1)
    scores, slots = table.topk(min(2 * B, table.shape[1]), dim=1)
    index = (ragged.segment_starts(per_prompt)[:, None] + slots).clamp(max=max(len(candidates.score) - 1, 0))
    return _Top(scores, index, torch.isfinite(scores))


def _finish(top: _Top, candidates: _Candidates, beams: _Beams, hypotheses: _Hypotheses, eos: int,
            length_penalty: float) -> torch.Tensor:
    """Finish stage: an EOS candidate among its prompt's first B finishes a hypothesis scored
    sum / length ** length_penalty; then prompts that cannot improve stop. Returns the (prompts, k)
    mask of the candidates that continue: the best B non-EOS ones of each prompt still searching."""
    B = hypotheses.num_beams
    any_candidate = len(candidates.score) > 0
    is_eos = top.valid & (candidates.token[top.index] == eos) if any_candidate else top.valid
    norm = (candidates.length[top.index].clamp(min=1.0) ** length_penalty if any_candidate
            else torch.ones_like(top.scores))
    rank = torch.arange(top.scores.shape[1])[None, :]
    for p, j in (is_eos & (rank < B)).nonzero().tolist():
        i = int(top.index[p, j])
        path = (*beams.tokens[int(candidates.beam[i])].tolist(), eos)
        hypotheses.add(p, float(top.scores[p, j] / norm[p, j]), path, int(candidates.node[i]))
    running = top.valid & ~is_eos
    running &= (running.cumsum(1) <= B)
    best = torch.where(running, top.scores / norm, torch.tensor(float("-inf"))).max(dim=1).values
    hypotheses.stop(running, best)
    return running & ~hypotheses.done[:, None]


def _reorder(top: _Top, running: torch.Tensor, candidates: _Candidates, beams: _Beams) -> _Beams:
    """Reorder stage: the continuing candidates become the next beams (grouped by prompt, in rank
    order); each keeps its parent's cache row (the cache follows at the next forward)."""
    sel_p, sel_j = running.nonzero(as_tuple=True)
    cand = top.index[sel_p, sel_j]
    parent = candidates.beam[cand]
    tokens = torch.cat([beams.tokens[parent], candidates.token[cand][:, None]], dim=1)
    return _Beams(sel_p, candidates.node[cand], top.scores[sel_p, sel_j], tokens, candidates.length[cand],
                  beams.row[parent], beams.fed[parent], beams.ahead[parent])
