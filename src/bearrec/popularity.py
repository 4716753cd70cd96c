"""The run's training targets counted on the title trie: what D2LR's propensities and IGD's
information gain are computed from (BASELINES.md).

Counts are of the rows actually trained on (after `train.max_train_examples`), one per row, by
title: items that share a title are one response for the model (one trie terminal), so their counts
add, as in the IGD authors' title -> frequency file. For every trie node:

- `node_counts[n]`: training targets whose path passes through n (the root: all N of them);
- `entropy[n]` = S(n) = sum over the titles below n of -p log p, p = count / N (not renormalised;
  titles never trained on have p = 0 and add nothing: bearrec's trie holds the whole catalogue,
  IGD's only the titles seen in training);
- `information_gain[n]` = S(parent) - S(n): the IG of the token that leads to n (0 at the root);
- `decisive[n]`: IG > 0, decided exactly from the counts (the token leaves out at least one
  trained-on title: node_counts[parent] > node_counts[n]), so float rounding cannot flip it. The
  two agree except in the degenerate case of a single trained-on title (p = 1, S = 0 everywhere),
  where both call every token non-decisive.

Computed once per run with array operations over the trie's CSR arrays, one pass per depth level.

IGD's decoding rule reads `decoding_weights(alpha)`: per node, the factor on the log-prob of the
token that leads to it, 1 - alpha (IG - min IG) / (max IG - min IG) over that token's siblings (the
children of the same node), 1 where the siblings' IGs are all equal (a single child among them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from bearrec.errors import BearrecError


SAME_IG = 1e-12  # nats: sibling IGs closer than this are equal (entropies here are O(1-10) nats)


class TargetCounts:
    def __init__(self, trie, targets: Sequence[int]):
        """`trie`: the run's `TitleTrie`; `targets`: the target item id of every training row."""
        self.trie = trie
        terminal_of = {item: node for node, items in trie.terminal_items.items() for item in items}
        missing = sorted({t for t in targets if t not in terminal_of})
        if missing:
            raise BearrecError(f"training target item {missing[0]} has no title in the trie")
        if not targets:
            raise BearrecError("no training targets to count")
        n = trie.num_nodes
        leaves = np.zeros(n, dtype=np.int64)
        np.add.at(leaves, np.asarray([terminal_of[t] for t in targets], dtype=np.int64), 1)
        self.total = len(targets)
        self.parent = np.full(n, -1, dtype=np.int64)
        self.parent[trie.child_nodes.numpy()] = np.repeat(np.arange(n), trie.num_children.numpy())
        self._levels = _levels(trie)
        self.node_counts = self.subtree_sums(leaves)
        p = leaves / self.total
        h = np.where(leaves > 0, -p * np.log(np.where(leaves > 0, p, 1.0)), 0.0)
        self.entropy = self.subtree_sums(h)
        up = np.maximum(self.parent, 0)
        self.information_gain = np.where(self.parent >= 0, self.entropy[up] - self.entropy, 0.0)
        self.decisive = (self.parent >= 0) & (self.node_counts[up] > self.node_counts)

    def decoding_weights(self, alpha: float) -> torch.Tensor:
        """Per node, IGD's factor on the log-prob of the token that leads to it (1 at the root)."""
        trie = self.trie
        starts = trie.indptr[:-1].numpy()
        has = trie.num_children.numpy() > 0
        # per edge, grouped by parent; exactly 0 for non-decisive tokens (float sums can leave ~1e-17)
        ig = np.where(self.decisive, self.information_gain, 0.0)[trie.child_nodes.numpy()]
        low = np.repeat(np.minimum.reduceat(ig, starts[has]), trie.num_children.numpy()[has])
        high = np.repeat(np.maximum.reduceat(ig, starts[has]), trie.num_children.numpy()[has])
        span = np.where(high - low > SAME_IG, high - low, 0.0)  # siblings of equal IG up to float rounding: 1
        m = np.where(span > 0, 1.0 - alpha * (ig - low) / np.where(span > 0, span, 1.0), 1.0)
        out = np.ones(trie.num_nodes)
        out[trie.child_nodes.numpy()] = m
        return torch.from_numpy(out).float()

    def subtree_sums(self, values: np.ndarray) -> np.ndarray:
        """Per node, the sum of `values` over the node and every node below it."""
        out = np.array(values, copy=True)
        for level in reversed(self._levels[1:]):  # deepest first: a level's sums are complete when added up
            np.add.at(out, self.parent[level], out[level])
        return out

    def step(self, nodes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The node each response token leads to (its trie node before the token, and the token)."""
        child = self.trie.step(torch.as_tensor(nodes).cpu(), torch.as_tensor(targets).cpu())
        if bool((child < 0).any()):
            raise BearrecError("a response token leaves the title trie")
        return child


def _levels(trie) -> list[np.ndarray]:
    """The trie's nodes by depth: [root], its children, their children, ..."""
    levels, frontier = [], torch.zeros(1, dtype=torch.long)
    while len(frontier):
        levels.append(frontier.numpy())
        _, _, frontier = trie.children(frontier)
    return levels
