"""Forced chains: what the decoder may skip at trie nodes with exactly one child.

Office titles are 30.8 tokens long (EOS included) with SmolLM2's tokenizer, 26.9 of them at nodes
with one child: once a beam has left every other title behind, its next tokens are forced. Two
shortcuts, each giving the results of the one-step-at-a-time search (`forced_chains=False`) to
float rounding (the model sees the same tokens, only in chunks of several, which round differently):

1. Constrained softmax: a node with one child gives it log 1 = 0 whatever the model says (the
   one-step search computes v - logsumexp([v]) = 0, exactly, for any finite v). Such a beam is
   scored without its state (`needs_state`), so it is not fed: its waiting tokens enter the cache
   in one multi-token forward when it next sits at a node with several children, and never if it
   finishes (a forced EOS) or drops out first. Every step's candidates, scores and lengths are
   bit-identical to the one-step search's given the same states. (A NaN the model would give
   only at forced tokens goes unseen; NaN weights are still refused at the first step.)
2. Whole-vocabulary softmax: each forced token costs the model's log p. At a step where every live
   beam of every prompt sits at a one-child node, a prompt's candidates are its <= B beams' only
   children, all inside its top 2B, so each beam either takes its forced child or leaves with its
   whole prompt (the prompt stopped) or as a hypothesis (the child is EOS, which ends a run). The
   next k steps, k = the shortest forced run among the beams (`TitleTrie.forced_run`), are thus
   known: one forward feeds each beam its waiting token and its next k - 1 forced tokens and gives
   the k states whose log-probs those steps use (`plan`).

Either way the per-step bookkeeping (ranking, hypotheses, stopping, length penalty, ghost lengths,
the `on_select` hook) runs at every step exactly as before; only the forwards move.
"""

from __future__ import annotations

import torch

from bearrec.trie import TitleTrie


def needs_state(counts: torch.Tensor, lazy: bool) -> torch.Tensor:
    """Which beams (their children counts) must be run through the model this step: under the
    constrained softmax (`lazy`) those with several children, else all."""
    return counts >= 2 if lazy else torch.ones(len(counts), dtype=torch.bool)


def plan(trie: TitleTrie, nodes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor | None:
    """Where every beam has one child and the shortest forced run is k >= 2: the (beams, k) forced
    tokens of the next k steps (the last may be EOS). Else None."""
    if len(counts) == 0 or not bool((counts == 1).all()):
        return None
    k = int(trie.forced_run[nodes].min())
    if k < 2:
        return None
    tokens, node = [], nodes
    for _ in range(k):
        first = trie.indptr[node]
        tokens.append(trie.child_tokens[first])
        node = trie.child_nodes[first]
    return torch.stack(tokens, dim=1)
