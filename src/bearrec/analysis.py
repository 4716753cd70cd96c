"""Why items get pruned (paper Figs. 3, 4, 6): exact overall probabilities of every title, the
pruning rate PR@K, and how many prunings violate the token-level necessary condition.

- `score_all_titles`: log P(title | prompt) for every catalogue title, by one forward per trie
  node (level by level, prompt KV shared), not one forward per title.
- `overall_rank`: the target's rank by that probability, exact below a cap (max K): the titles beam
  search returned count first (their log-probs read off the decoder's scores, or scored), then only
  prefixes scoring above the target are walked, until max K titles beat it. The targets of a decode
  batch's users are scored in one forward (`score_batch`).
- PR@K: among users whose target ranks in the top K by overall probability, the share whose target
  beam search did not return.
- violation: at some step the target token's probability is below the B-th largest probability of
  the trie-valid next tokens given its gold prefix; otherwise the target lost to other beams only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bearrec import prefix_attention, ragged
from bearrec.atomic import atomic_write_text
from bearrec.config import DecodeConfig
from bearrec.decoding import Prefilled
from bearrec.errors import BearrecError
from bearrec.evaluation import Recommendation, Recommender
from bearrec.losses import Allowed, bear_terms
from bearrec.trie import TitleTrie

FLOOR_SLACK = 0.25  # nats below the target's score still walked: low-precision rounding differs between batches
RAW_BEAMS = 2  # the search without length normalisation keeps RAW_BEAMS * max K beams (5x: no more users decided)
SHORT_TITLES = 64  # the titles with the fewest tokens, scored for users the returned titles leave undecided
PRUNING_KEYS = ("index", "overall_rank", "pruned", "violation")  # of a user's record
KNOWN_MARGIN = 1e-4  # nats by which a title the decoder scored must beat the target to count (fp32)


@torch.no_grad()
def score_all_titles(model, trie: TitleTrie, prompt: list[int], constrained_softmax: bool = True) -> dict[int, float]:
    """{terminal node: sum of token log-probs of its path} for every title in the trie: the trie
    is walked level by level, one forward per internal node, every node a row of one prompt."""
    return _walk(model, trie, prompt, constrained_softmax, None)


@torch.no_grad()
def score_paths(model, trie: TitleTrie, prompt: list[int], paths, constrained_softmax: bool = True) -> dict[int, float]:
    """The same scores for the titles of `paths` (token ids ending in EOS), {terminal node: score},
    at least those. With the shared-prefix cache every path is fed whole in one forward after the
    prompt (one forward, not one per level: on a 135M model a forward's fixed cost is most of a
    level's); otherwise the level walk restricted to their prefixes (which also returns the
    titles ending on the way)."""
    return score_batch(model, trie, [prompt], [paths], constrained_softmax)[0]


@torch.no_grad()
def score_batch(model, trie: TitleTrie, prompts: list[list[int]], paths: list, constrained_softmax: bool = True
                ) -> list[dict[int, float]]:
    """`score_paths` of `paths[i]` after `prompts[i]` for every i: with the shared-prefix cache one
    prefill (the prompts' common prefix once) and one forward feeding every path; otherwise one
    `score_paths` level walk per prompt."""
    asked = [list(dict.fromkeys(tuple(p) for p in per)) for per in paths]
    if len(asked) != len(prompts):
        raise ValueError(f"{len(asked)} lists of paths for {len(prompts)} prompts")
    if not prompts:
        return []
    if not prefix_attention.supports(model):
        return [_walk(model, trie, prompt, constrained_softmax,
                      _within({n for path in per for n in (*trie.walk(path), trie.node_of(path))})) if per else {}
                for prompt, per in zip(prompts, asked)]
    flat = [p for per in asked for p in per]
    if not flat:
        return [{} for _ in prompts]
    run = Prefilled(model, prompts, constrained_softmax, pad_token_id=0, shared_prefix=True)
    run.feed_sequences([list(p) for p in flat], [i for i, per in enumerate(asked) for _ in per])
    nodes = torch.tensor([n for path in flat for n in trie.walk(path)])  # the node before each token
    counts, toks, children = trie.children(nodes)
    rows = ragged.segment_ids(counts)
    log_probs = run.child_log_probs(rows, toks, counts)
    taken = torch.tensor([t for path in flat for t in path])
    token_lp = torch.zeros(len(nodes)).index_add_(0, rows, torch.where(toks == taken[rows], log_probs, 0.0))
    per_path = iter(token_lp.split([len(p) for p in flat]))
    return [{trie.node_of(p): float(next(per_path).sum()) for p in per} for per in asked]


def _within(wanted: set[int]):
    """`_walk`'s `expand`: only the children in `wanted`."""
    return lambda children, scores: torch.tensor([int(c) in wanted for c in children.tolist()], dtype=torch.bool)


@torch.no_grad()
def titles_above(model, trie: TitleTrie, prompt: list[int], score: float, cap: int, constrained_softmax: bool = True,
                 slack: float = 0.0, exclude: int | None = None, shown: frozenset[int] = frozenset()
                 ) -> dict[int, float]:
    """Scores of titles (terminal node: log-prob), among them every title scoring above `score` or
    at least `cap` of those with the titles `shown` to beat it elsewhere (node `exclude` not
    counted): only prefixes above `score - slack` are walked (a log-prob is <= 0: no title scores
    more than its prefix), and the walk stops after the level where `cap` titles are known to beat
    `score` (short titles finish first: a target that many titles outscore costs a few levels)."""
    return _walk(model, trie, prompt, constrained_softmax, lambda children, scores: scores > score - slack,
                 stop=lambda out: len(_beating(out, exclude, score) | shown) >= cap)


def _walk(model, trie: TitleTrie, prompt: list[int], constrained_softmax: bool, expand, stop=None,
          run: Prefilled | None = None) -> dict[int, float]:
    """Level by level from the root; `expand(children, scores)` picks which non-terminal children
    are walked on (None: all); `stop(found)` ends the walk after a level. `run`: the prompt prefilled."""
    run = run or Prefilled(model, [prompt], constrained_softmax, pad_token_id=0, shared_prefix=None)
    nodes, scores = torch.zeros(1, dtype=torch.long), torch.zeros(1)
    out: dict[int, float] = {}
    depth = 0
    with run.attention():
        while len(nodes):
            counts, toks, children = trie.children(nodes)
            rows = ragged.segment_ids(counts)
            child_scores = scores[rows] + run.child_log_probs(rows, toks, counts)
            ends = toks == trie.eos_token_id
            out.update(zip(children[ends].tolist(), child_scores[ends].tolist()))
            go = ~ends if expand is None else ~ends & expand(children, child_scores)
            if not bool(go.any()) or (stop is not None and stop(out)):
                break
            nodes, scores = children[go], child_scores[go]
            depth += 1
            run.advance(rows[go], torch.zeros(len(nodes), dtype=torch.long), toks[go], depth)
    return out


def overall_rank(model, trie: TitleTrie, prompt: list[int], target: tuple[int, ...], constrained_softmax: bool,
                 candidates=(), cap: int | None = None, walk: bool = True,
                 known: dict[int, float] | None = None, margin: float = KNOWN_MARGIN,
                 scored: dict[int, float] | None = None) -> int | None:
    """How many titles have a higher overall probability P(title | prompt) than the target (path of
    token ids), exact below `cap` and `cap` otherwise (None: always exact, every title scored).
    `candidates` (paths, e.g. what beam search returned) are scored first: when `cap` of them beat
    the target, nothing else is needed; else `titles_above` walks the prefixes scoring above the
    target's until `cap` titles beat it (`walk` False: returns None instead). `known`: {terminal
    node: log-prob} of further titles computed elsewhere (a search's own sums); one counts only
    when it beats the target by `margin` (the computations round differently), so they can end
    the search early but never make a rank below `cap` inexact. `scored`: `score_paths` of the target
    and the candidates, computed already (`score_batch`)."""
    node = trie.node_of(target)
    if cap is None:
        scores = score_all_titles(model, trie, prompt, constrained_softmax)
    else:
        scores = scored if scored is not None else score_paths(model, trie, prompt, [target, *candidates],
                                                                 constrained_softmax)
        shown = _beating(scores, node, scores[node]) | _beating(
            {n: v for n, v in (known or {}).items() if n not in scores}, node, scores[node] + margin)
        if len(shown) >= cap:
            return cap
        if not walk:
            return None
        found = titles_above(model, trie, prompt, scores[node], cap, constrained_softmax, FLOOR_SLACK, node,
                             frozenset(shown))
        if len(_beating(found, node, scores[node]) | shown) >= cap:
            return cap
        scores = found if node in found else score_all_titles(model, trie, prompt, constrained_softmax)
        # (target not reached: rounding beyond the slack, so every title is scored)
    rank = len(_beating(scores, node, scores[node]))
    return rank if cap is None else min(rank, cap)


def _beating(scores: dict[int, float], node: int | None, score: float) -> set[int]:
    """The titles of `scores` above `score`, `node` left out."""
    return {n for n, v in scores.items() if v > score and n != node}


@torch.no_grad()
def violates_condition(model, trie: TitleTrie, prompt: list[int], path: tuple[int, ...], num_beams: int) -> bool:
    """True when at some step the target token is not among the B most probable trie-valid next
    tokens given its own gold prefix (fewer than B valid tokens: the condition holds). Only valid
    tokens count because beam search can extend the prefix with nothing else; their order is the
    same under both score semantics (a softmax over the valid tokens or over the whole vocabulary
    divides them by one normaliser), so the check needs no `constrained_softmax`."""
    ids = torch.tensor([prompt + list(path[:-1])], device=next(model.parameters()).device)
    logits = model(ids).logits[0, len(prompt) - 1:].float().cpu()
    allowed = Allowed.from_trie(trie, torch.tensor(trie.walk(path)))
    terms = bear_terms(logits, torch.tensor(path), allowed, base="msl", num_beams=num_beams, short_sets="trivial")
    return not bool(terms.inside_top_b.all())  # the training log's condition (`condition_metrics`)


def analyze(recommender: Recommender, examples, indices: list[int], ks=(5, 10), progress: bool = True,
            exact_ranks: bool = False, recommendations: list[Recommendation] | None = None,
            done: dict[int, dict] | None = None, record: Callable[[dict], None] | None = None) -> dict:
    """PR@K and violations for the users `indices` of `examples`. A user's `overall_rank` is exact
    below max(ks) and max(ks) otherwise, which is all PR@K needs (`exact_ranks`: every title scored
    for every user, many times slower). `violation` is checked only where PR@K counts it (the
    target pruned and ranked below max(ks)); None elsewhere. `recommendations`: what beam search
    returned for these users, in the order of `indices` (e.g. the run's own test evaluation,
    `evaluation.stored_recommendations`), decoded by this model and decoding: their scores are read
    as the returned titles' log-probabilities; None: decoded here. `done`: {index: record} of users an
    earlier, cut-off analysis finished (kept as they are); `record(user)` is called with each new
    user's record as soon as it exists (`evaluation.read_records` with PRUNING_KEYS reads them back)."""
    enc, decode = recommender.encoder, recommender.decode
    if decode.exclude_history:
        raise BearrecError("the pruning analysis ranks every title, the history's too: decode with "
                           "decode.exclude_history=false to analyse pruning")
    cap = None if exact_ranks else max(ks)
    model, trie = recommender.model, enc.trie
    done = {i: u for i, u in (done or {}).items() if i in set(indices)}
    todo = [j for j, i in enumerate(indices) if i not in done]
    if recommendations is not None and len(recommendations) != len(indices):
        raise ValueError(f"{len(recommendations)} recommendations for {len(indices)} users")
    if recommendations is None:
        fresh = recommender.recommend([examples[indices[j]].history for j in todo], progress=progress)
        recs: list[Recommendation | None] = [None] * len(indices)
        for j, rec in zip(todo, fresh):
            recs[j] = rec
    else:
        recs = recommendations
    raw_search = cap is not None and decode.length_penalty != 0 and recommender.token_weights is None
    # bf16 autocast or any weights stored in 16 bits: sums of token log-probs round apart between batches
    low_precision = decode.autocast == "bfloat16" or any(
        p.dtype in (torch.bfloat16, torch.float16) for p in recommender.model.parameters())
    margin = FLOOR_SLACK if low_precision else KNOWN_MARGIN
    # Without ghost tokens or IGD weights a returned title's score is the decoder's sum of its token
    # log-probs / length ** length_penalty: times the length's power, evidence as good as the raw
    # search's, so only the target is scored (in fp32; in low precision, where evidence needs
    # FLOOR_SLACK, the returned titles are scored with it, exactly).
    from_scores = cap is not None and decode.ghost_threshold is None and recommender.token_weights is None \
        and not low_precision
    users: list[dict | None] = [done.get(i) for i in indices]
    returned = {j: [] if from_scores else [trie.item_paths[items[0]] for items in recs[j].items] for j in todo}
    known = {j: _returned_log_probs(recs[j], trie, decode.length_penalty) if from_scores else None for j in todo}
    scored: dict[int, dict[int, float] | None] = {j: None for j in todo}

    def finish(j: int, rec: dict | None) -> bool:
        users[j] = rec
        if rec is not None and record is not None:
            record(rec)
        return rec is not None

    def stage(js: list[int], paths: list, desc: str) -> list[int]:
        """Score the target, the returned titles (see from_scores) and `paths` of the users `js`,
        chunks of users a forward; returns those still undecided."""
        per_chunk = max(1, decode.batch_size // (1 + len(returned[js[0]]) + len(paths))) if js else 1
        left = []
        for at in tqdm(range(0, len(js), per_chunk), desc=desc, disable=not progress or not js):
            part = js[at:at + per_chunk]
            chunk = [examples[indices[j]] for j in part]
            with recommender.autocast():
                got = score_batch(model, trie, [enc.prompt_ids(e.history) for e in chunk],
                                  [[tuple(enc.target_ids(e.target)), *returned[j], *paths]
                                   for j, e in zip(part, chunk)], decode.constrained_softmax)
            for j, scores in zip(part, got):
                scored[j] = scores
                if not finish(j, _pruning_record(recommender, examples[indices[j]], indices[j], recs[j], returned[j],
                                                 cap, ks, walk=False, known=known[j], margin=margin, scored=scores)):
                    left.append(j)
        return left

    if cap is None:  # every title scored for every user
        for j in tqdm(todo, desc="ranking targets", disable=not progress):
            finish(j, _pruning_record(recommender, examples[indices[j]], indices[j], recs[j], [], cap, ks))
        undecided = []
    else:
        undecided = stage(todo, [], "ranking targets")
        # The most likely titles are often the shortest (a log-prob sums negative terms): scored with
        # the target they decide most users the returned titles left undecided (10 of 11 such sft users
        # on Office), for ~700 tokens a user, where the walk costs thousands of prefixes a level.
        short = _shortest_titles(trie, SHORT_TITLES)
        if short and undecided:
            undecided = stage(undecided, short, "ranking targets (short titles)")
    # With length normalisation the beams rank by score / length, PR@K by the overall log-probability,
    # so the returned titles are not the most probable ones (a long target can outscore most of them;
    # on a whole-vocabulary softmax the walk then visits thousands of prefixes a level). The same
    # search without normalisation (RAW_BEAMS * max K beams) returns likely titles by that probability
    # with their log-probabilities as its scores: users still undecided get those as evidence (one
    # batched decode of those users), and only users still undecided are walked. Exact either way:
    # evidence ends a search only by showing max K titles above the target (by a margin: in low
    # precision the two computations round apart by up to FLOOR_SLACK).
    if undecided and raw_search:
        raw = copy.copy(recommender)
        raw.decode = dataclasses.replace(decode, length_penalty=0.0, num_beams=max(decode.num_beams, RAW_BEAMS * cap))
        more = raw.recommend([examples[indices[j]].history for j in undecided], progress=progress)
        for j, extra in zip(undecided, tqdm(more, desc="ranking targets (raw beams)", disable=not progress)):
            # without length normalisation (or IGD weights) a beam's score is its log-probability
            evidence = {**(known[j] or {}), **{trie.node_of(trie.item_paths[items[0]]): score
                                               for items, score in zip(extra.items, extra.scores)}}
            finish(j, _pruning_record(recommender, examples[indices[j]], indices[j], recs[j], returned[j], cap, ks,
                                      known=evidence, margin=margin, raw_beams=True, scored=scored[j]))
        undecided = []
    for j in undecided:  # the prefix walk
        finish(j, _pruning_record(recommender, examples[indices[j]], indices[j], recs[j], returned[j], cap, ks,
                                  known=known[j], margin=margin, scored=scored[j]))
    return {**summarize_pruning(users, ks, decode), "rank_cap": cap,
            "raw_beam_users": sum(bool(u.get("raw_beams")) for u in users)}


def _shortest_titles(trie: TitleTrie, n: int) -> list[tuple[int, ...]]:
    """The `n` titles (paths) with the fewest tokens, ties by token ids."""
    return sorted(set(trie.item_paths.values()), key=lambda p: (len(p), p))[:n]


def _returned_log_probs(rec: Recommendation, trie: TitleTrie, length_penalty: float) -> dict[int, float]:
    """{terminal node: log-prob} of the returned titles from the decoder's scores (sum / len ** lp)."""
    paths = [trie.item_paths[items[0]] for items in rec.items]
    return {trie.node_of(p): score * float(len(p)) ** length_penalty for p, score in zip(paths, rec.scores)}


def _pruning_record(recommender: Recommender, example, index: int, rec: Recommendation, candidates, cap, ks,
                    walk: bool = True, known: dict[int, float] | None = None, margin: float = KNOWN_MARGIN,
                    raw_beams: bool = False, scored: dict[int, float] | None = None) -> dict | None:
    """One user's record (None: `walk` False and the candidates left the rank undecided). `scored`:
    the target's and the candidates' log-probs, computed already."""
    enc, model, trie = recommender.encoder, recommender.model, recommender.encoder.trie
    prompt = enc.prompt_ids(example.history)
    path = tuple(enc.target_ids(example.target))
    pruned = example.target not in {item for items in rec.items for item in items}
    with recommender.autocast():
        rank = overall_rank(model, trie, prompt, path, recommender.decode.constrained_softmax, candidates, cap, walk,
                            known, margin, scored)
        if rank is None:
            return None
        counted = pruned and rank < max(ks)  # the only violations summarize_pruning reads
        violation = violates_condition(model, trie, prompt, path, recommender.decode.num_beams) if counted else None
    return {"index": index, "overall_rank": rank, "pruned": pruned, "violation": violation, "raw_beams": raw_beams}


def summarize_pruning(users: list[dict], ks, decode: DecodeConfig) -> dict:
    out = {"num_users": len(users), "num_beams": decode.num_beams, "constrained_softmax": decode.constrained_softmax,
           "length_penalty": decode.length_penalty, "ghost_threshold": decode.ghost_threshold}
    for k in ks:
        eligible = [u for u in users if u["overall_rank"] < k]
        pruned = [u for u in eligible if u["pruned"]]
        violating = [u for u in pruned if u["violation"]]
        out[f"PR@{k}"] = {"eligible": len(eligible), "pruned": len(pruned),
                          "rate": len(pruned) / len(eligible) if eligible else None,
                          "violation_share": len(violating) / len(pruned) if pruned else None}
    out["users"] = users
    return out


def plot_pruning(results: dict[str, dict], path: str | Path, ks=(5, 10)) -> None:
    """Bars of PR@K and of the violation share, one group per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        r = results[name]
        xs = [i + j * width for i in range(len(ks))]
        axes[0].bar(xs, [r[f"PR@{k}"]["rate"] or 0 for k in ks], width, label=name)
        axes[1].bar(xs, [r[f"PR@{k}"]["violation_share"] or 0 for k in ks], width, label=name)
        for x, k in zip(xs, ks):  # the counts behind each bar; n/a where nothing was eligible
            cell = r[f"PR@{k}"]
            axes[0].text(x, (cell["rate"] or 0) + 0.02, f"{cell['pruned']}/{cell['eligible']}", ha="center", fontsize=7)
            viol = "n/a" if cell["violation_share"] is None else f"{cell['violation_share']:.2f}"
            axes[1].text(x, (cell["violation_share"] or 0) + 0.02, viol, ha="center", fontsize=7)
    for ax, title in zip(axes, ("pruning rate PR@K", "pruned that violate the condition")):
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(ks))], [f"K={k}" for k in ks])
        ax.set_ylim(0, 1.12)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_pruning(out_dir: str | Path, result: dict) -> None:
    atomic_write_text(Path(out_dir) / "pruning.json", json.dumps(result, indent=2) + "\n")
