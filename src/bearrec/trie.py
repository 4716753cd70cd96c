"""`TitleTrie`: the one definition of "valid next token".

Paths are the token ids of `"title"` followed by EOS, exactly as training targets and the decoder
see them. The node reached by EOS is a terminal holding the item ids with that title (several for
duplicate titles). The trie is stored as CSR arrays so that a batch of prefixes gets its allowed
next tokens, or its next nodes, with tensor ops and no Python loop over beams:

- `indptr[n] : indptr[n+1]` is the range of node n's children in `child_tokens` / `child_nodes`
  (sorted by token id);
- `edge_keys = parent * stride + token` (sorted), so a batch of (node, token) steps is one
  `searchsorted`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from bearrec import ragged

DEAD = -1  # the node id for a prefix that left the trie


class TitleTrie:
    def __init__(self, paths: Sequence[Sequence[int]], items: Sequence[Sequence[int]], eos_token_id: int):
        """`paths[k]`: token ids of one distinct title, ending with `eos_token_id`; `items[k]`: its item ids."""
        if len(paths) != len(items):
            raise ValueError("paths and items must have the same length")
        self.eos_token_id = int(eos_token_id)
        parents, tokens = [], []
        edges: dict[tuple[int, int], int] = {}
        terminals: dict[int, tuple[int, ...]] = {}
        self.item_paths: dict[int, tuple[int, ...]] = {}
        for path, item_ids in zip(paths, items):
            path = tuple(int(t) for t in path)
            if not path or path[-1] != self.eos_token_id or self.eos_token_id in path[:-1]:
                raise ValueError(f"a trie path must end with EOS ({self.eos_token_id}) exactly once: {path}")
            node = 0
            for tok in path:
                child = edges.get((node, tok))
                if child is None:
                    child = len(parents) + 1
                    edges[(node, tok)] = child
                    parents.append(node)
                    tokens.append(tok)
                node = child
            if node in terminals:
                raise ValueError(f"two titles share the token path {path}; merge their item ids instead")
            terminals[node] = tuple(int(i) for i in item_ids)
            for item in item_ids:
                self.item_paths[int(item)] = path
        self.num_nodes = len(parents) + 1
        parent_arr = np.asarray(parents, dtype=np.int64)
        token_arr = np.asarray(tokens, dtype=np.int64)
        order = np.lexsort((token_arr, parent_arr))  # by parent, then token
        child_ids = np.arange(1, self.num_nodes, dtype=np.int64)[order]
        self.stride = int(token_arr.max()) + 1 if len(token_arr) else 1
        counts = np.bincount(parent_arr, minlength=self.num_nodes)
        self.indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        self.child_tokens = torch.from_numpy(token_arr[order])
        self.child_nodes = torch.from_numpy(child_ids)
        self.edge_keys = torch.from_numpy(parent_arr[order] * self.stride + token_arr[order])
        self.terminal_items = terminals
        self.num_children = self.indptr[1:] - self.indptr[:-1]

    # ---- construction from a catalogue -------------------------------------------------------
    @classmethod
    def from_title_ids(cls, title_ids: dict[str, list[int]], items_by_title: dict[str, list[int]],
                       eos_token_id: int) -> "TitleTrie":
        titles = list(title_ids)
        return cls([[*title_ids[t], eos_token_id] for t in titles], [items_by_title[t] for t in titles],
                   eos_token_id)

    # ---- batched queries ---------------------------------------------------------------------
    @functools.cached_property
    def forced_run(self) -> torch.Tensor:
        """Per node, how many steps from it are forced: 0 at a node with several children or none,
        else 1 + its only child's (a node whose only child is EOS: 1). `bearrec.chains` uses it."""
        single = self.num_children == 1
        only = torch.where(single, self.child_nodes[self.indptr[:-1].clamp(max=max(len(self.child_nodes) - 1, 0))]
                           if len(self.child_nodes) else torch.zeros_like(self.num_children), 0)
        run = single.long()
        while True:  # as many rounds as the longest run: every round extends each run by one
            nxt = torch.where(single, 1 + run[only], 0)
            if torch.equal(nxt, run):
                return run
            run = nxt

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Node reached from each `nodes[i]` by `tokens[i]`; DEAD where that edge does not exist."""
        nodes = torch.as_tensor(nodes, dtype=torch.long)
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        keys = nodes * self.stride + tokens
        pos = torch.searchsorted(self.edge_keys, keys).clamp_(max=max(len(self.edge_keys) - 1, 0))
        found = (nodes >= 0) & (tokens >= 0) & (tokens < self.stride) & (self.edge_keys[pos] == keys)
        return torch.where(found, self.child_nodes[pos], torch.full_like(nodes, DEAD))

    def children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ragged children of a batch of nodes: (counts, tokens, child nodes), flat in node order."""
        nodes = torch.as_tensor(nodes, dtype=torch.long)
        live = nodes >= 0
        safe = nodes.clamp(min=0)
        counts = torch.where(live, self.num_children[safe], torch.zeros_like(safe))
        ids = ragged.segment_ids(counts)
        flat = self.indptr[safe][ids] + ragged.segment_offsets(counts, ids)
        return counts, self.child_tokens[flat], self.child_nodes[flat]

    def allowed_mask(self, nodes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(len(nodes), vocab_size) boolean mask of the valid next tokens, built on the fly."""
        counts, toks, _ = self.children(nodes)
        mask = torch.zeros(len(counts), vocab_size, dtype=torch.bool)
        mask[ragged.segment_ids(counts), toks] = True
        return mask

    # ---- single-sequence helpers (tests, analysis) --------------------------------------------
    def walk(self, token_ids: Sequence[int]) -> list[int]:
        """Nodes before each token of `token_ids` (len == len(token_ids)); raises if it leaves the trie."""
        nodes, node = [], 0
        for tok in token_ids:
            nodes.append(node)
            node = int(self.step(torch.tensor([node]), torch.tensor([tok]))[0])
            if node == DEAD:
                raise KeyError(f"token path {list(token_ids)} leaves the trie at token {tok}")
        return nodes

    def node_of(self, prefix: Sequence[int]) -> int:
        node = 0
        for tok in prefix:
            node = int(self.step(torch.tensor([node]), torch.tensor([tok]))[0])
            if node == DEAD:
                return DEAD
        return node

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        return self.next_tokens_of(self.node_of(prefix))

    def next_tokens_of(self, node: int) -> list[int]:
        if node == DEAD:
            return []
        return self.child_tokens[self.indptr[node]:self.indptr[node + 1]].tolist()

    def terminals(self, paths: Sequence[Sequence[int]]) -> torch.Tensor:
        """Batched walk: the node each full path ends at (DEAD where it leaves the trie)."""
        if not paths:
            return torch.empty(0, dtype=torch.long)
        toks, _ = ragged.pad_sequences(paths, -1, left=False)
        nodes = torch.zeros(len(paths), dtype=torch.long)
        for t in range(toks.shape[1]):
            active = toks[:, t] >= 0
            nodes = torch.where(active, self.step(nodes, toks[:, t].clamp(min=0)), nodes)
        return nodes

    def contains_all(self, paths: Sequence[Sequence[int]]) -> torch.Tensor:
        """Boolean per path: it is a complete title path (ends at a terminal)."""
        ends = self.terminals(paths)
        return torch.tensor([int(n) in self.terminal_items for n in ends], dtype=torch.bool)

    def items_at(self, node: int) -> tuple[int, ...]:
        return self.terminal_items.get(int(node), ())

    def contains(self, path: Sequence[int]) -> bool:
        node = self.node_of(path)
        return node != DEAD and node in self.terminal_items

    def __len__(self) -> int:
        return len(self.terminal_items)
