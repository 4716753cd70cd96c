"""Shared-prefix attention for beam search: the prompt's keys/values are stored once per user,
each beam's generated tokens in a ragged store of its own, and attention combines both in one
softmax.

Hugging Face's cache holds a full copy of the prompt per beam and copies all of it at every step
(`reorder_cache` gathers, `update` concatenates): with a ~200-token prompt and ~15 generated tokens
that copying costs as much as the forward pass. Here a reorder moves only the generated part.

The generated store is ragged: row r (a beam) holds `length[r]` tokens, left-aligned. A forward
feeds any rows any number of new tokens (`Feed`): the tokens are packed into one sequence (batch 1,
no padding, so the projections and MLPs see only real tokens) and each attends to its user's prompt,
its row's stored tokens and the new tokens of its row up to itself. That lets the decoder feed a
beam several tokens at once (a forced chain, `bearrec.chains`) and leave beams that need no
scores unfed, and lets the prefill compute the prompts' common prefix once (`bearrec.feeding`).

Host synchronisation: the layout of a feed is computed on the host, where the decoder's beams
are, and reaches the device in one pinned non-blocking copy (`to_device`); the kernel itself has no
data-dependent shapes, so it never waits for the device.

Used for decoder-only models whose attention goes through `ALL_ATTENTION_FUNCTIONS` with plain
scaled dot-product semantics (`SUPPORTED`); anything else keeps the ordinary cache. The math is
the eager attention's, so results equal it to rounding.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface

from bearrec import ragged
from bearrec.modeling import unwrap_peft

NAME = "bearrec_shared_prefix"
SUPPORTED = {"llama", "qwen2", "qwen3", "mistral"}
_active: "SharedPrefixCache | None" = None


def supports(model) -> bool:
    cfg = unwrap_peft(model).config
    return (cfg.model_type in SUPPORTED and not getattr(cfg, "use_sliding_window", False)
            and getattr(cfg, "attn_logit_softcapping", None) is None)


def to_device(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Long host tensors on `device` in one copy (pinned and non-blocking on a GPU: no sync)."""
    if device.type == "cpu":
        return list(tensors)
    flat = torch.cat([t.reshape(-1).long() for t in tensors])
    moved = flat.pin_memory().to(device, non_blocking=True)
    return [m.view(t.shape) for m, t in zip(moved.split([t.numel() for t in tensors]), tensors)]


@dataclass
class Feed:
    """The layout of one forward: `counts[i]` new tokens for store row `rows[i]` (rows ascending and
    grouped by user), packed flat in row order. Device tensors per token; ints from the host."""

    rows: torch.Tensor  # (R,) store rows fed
    tok_slot: torch.Tensor  # (Q,) index into `rows` of each token's row
    tok_off: torch.Tensor  # (Q,) place among its row's new tokens
    tok_row: torch.Tensor  # (Q,) store row
    tok_col: torch.Tensor  # (Q,) column it takes in the store
    tok_user: torch.Tensor  # (Q,) user (prompt) of its row
    tok_uslot: torch.Tensor  # (Q,) place among its user's new tokens
    width: int  # most new tokens of a row
    user_width: int  # most new tokens of a user
    columns: int  # store columns the fed rows use after the feed
    all_rows: bool  # every store row fed, in order


class SharedPrefixCache:
    """Duck-typed cache: prompt K/V per user (or none), generated K/V per row, ragged."""

    def __init__(self, prompt_k: list[torch.Tensor] | None, prompt_v: list[torch.Tensor] | None,
                 prompt_mask: torch.Tensor | None, num_layers: int, row_user: torch.Tensor):
        self.prompt_k, self.prompt_v = prompt_k, prompt_v  # per layer (N, Hkv, P, d), or None
        self.prompt_bias = None
        if prompt_k is not None:
            dtype, device = prompt_k[0].dtype, prompt_k[0].device
            bias = torch.zeros(prompt_mask.shape, dtype=dtype, device=device)
            self.prompt_bias = bias.masked_fill(prompt_mask.to(device) == 0, torch.finfo(dtype).min)[:, None, None]
        self.num_users = len(prompt_mask) if prompt_mask is not None else int(row_user.max()) + 1
        self.gen_k: list[torch.Tensor | None] = [None] * num_layers
        self.gen_v: list[torch.Tensor | None] = [None] * num_layers
        self.user = row_user.clone()  # host: the user of each store row
        self.length = torch.zeros(len(row_user), dtype=torch.long)  # host: tokens each row holds
        self.feed: Feed | None = None

    def fresh(self) -> "SharedPrefixCache":
        """The same prompts' K/V (the tensors shared, never written), one row per user, nothing
        generated: a second search from the same prefill."""
        twin = copy.copy(self)
        twin.gen_k, twin.gen_v = [None] * len(self.gen_k), [None] * len(self.gen_v)
        twin.user = torch.arange(self.num_users)
        twin.length = torch.zeros(self.num_users, dtype=torch.long)
        twin.feed = None
        return twin

    @classmethod
    def from_prefill(cls, prefill_cache, prompt_mask: torch.Tensor) -> "SharedPrefixCache":
        """From a padded prefill's DynamicCache: one row per user, nothing generated yet."""
        layers = prefill_cache.layers
        return cls([layer.keys for layer in layers], [layer.values for layer in layers], prompt_mask, len(layers),
                   torch.arange(prompt_mask.shape[0]))

    def reorder(self, index: torch.Tensor) -> None:
        """Store rows become the rows `index` (host long tensor) of the current ones."""
        self.user, self.length = self.user[index], self.length[index]
        if self.gen_k[0] is not None:
            (index,) = to_device(self.gen_k[0].device, index)
            self.gen_k = [k.index_select(0, index) for k in self.gen_k]
            self.gen_v = [v.index_select(0, index) for v in self.gen_v]

    def plan(self, rows: torch.Tensor, counts: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Lay out the next forward: `counts[i]` tokens for row `rows[i]` (host tensors, rows
        ascending). Returns each token's column in its row (host), which gives its position."""
        slot = ragged.segment_ids(counts)
        off = ragged.segment_offsets(counts, slot)
        row = rows[slot]
        col = self.length[row] + off
        user = self.user[row]
        user_counts = torch.bincount(user, minlength=self.num_users)
        uslot = ragged.segment_offsets(user_counts, user)
        new_len = self.length[rows] + counts
        dev = to_device(device, rows, slot, off, row, col, user, uslot)
        self.feed = Feed(*dev, width=ragged.padded_width(counts, 1), user_width=ragged.padded_width(user_counts, 1),
                         columns=int(new_len.max()) if len(rows) else 0,
                         all_rows=len(rows) == len(self.length) and bool((rows == torch.arange(len(rows))).all()))
        self.length[rows] = new_len
        return col

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Store the new tokens' K/V (1, Hkv, Q, d) at their rows and columns."""
        feed = self.feed
        k, v = key_states[0].transpose(0, 1), value_states[0].transpose(0, 1)  # (Q, Hkv, d)
        store_k, store_v = self.gen_k[layer_idx], self.gen_v[layer_idx]
        have = 0 if store_k is None else store_k.shape[2]
        if feed.columns > have:  # grow by at least 16 columns: no copy at every step
            grow = max(feed.columns - have, 16)
            shape = (len(self.length), k.shape[1], grow, k.shape[2])
            pad_k, pad_v = k.new_zeros(shape), v.new_zeros(shape)
            store_k = pad_k if store_k is None else torch.cat([store_k, pad_k], dim=2)
            store_v = pad_v if store_v is None else torch.cat([store_v, pad_v], dim=2)
        store_k[feed.tok_row, :, feed.tok_col] = k.to(store_k.dtype)
        store_v[feed.tok_row, :, feed.tok_col] = v.to(store_v.dtype)
        self.gen_k[layer_idx], self.gen_v[layer_idx] = store_k, store_v
        return key_states, value_states


def shared_prefix_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query (1, H, Q, d): the packed new tokens of `cache.feed`; keys/values come from the cache."""
    cache, feed = _active, _active.feed
    layer = module.layer_idx
    q_len, n_heads, dim = query.shape[2], query.shape[1], query.shape[3]
    gk, gv = cache.gen_k[layer], cache.gen_v[layer]
    n_kv = gk.shape[1]
    groups = n_heads // n_kv
    q = query[0].transpose(0, 1).reshape(q_len, n_kv, groups, dim)  # (Q, Hkv, G, d)
    parts = []
    # the user's prompt, computed per user (its keys are read once for all its tokens)
    if cache.prompt_k is not None:
        pk, pv = cache.prompt_k[layer], cache.prompt_v[layer]
        n_users, prompt_len = pk.shape[0], pk.shape[2]
        uw = feed.user_width
        qu = ragged.scatter_padded(q, feed.tok_user, feed.tok_uslot, n_users, uw, 0.0)
        qu = qu.permute(0, 2, 1, 3, 4).reshape(n_users, n_kv, uw * groups, dim)
        sp = torch.matmul(qu, pk.transpose(2, 3)) * scaling + cache.prompt_bias
        sp = sp.view(n_users, n_kv, uw, groups, prompt_len).permute(0, 2, 1, 3, 4)[feed.tok_user, feed.tok_uslot]
        parts.append(sp)
    # the row's generated tokens, computed per fed row, causal by column
    n_rows, width, cols = len(feed.rows), feed.width, feed.columns
    rk, rv = gk[:, :, :cols], gv[:, :, :cols]
    if not feed.all_rows:
        rk, rv = rk.index_select(0, feed.rows), rv.index_select(0, feed.rows)
    qr = ragged.scatter_padded(q, feed.tok_slot, feed.tok_off, n_rows, width, 0.0)
    qr = qr.permute(0, 2, 1, 3, 4).reshape(n_rows, n_kv, width * groups, dim)
    sg = torch.matmul(qr, rk.transpose(2, 3)) * scaling
    sg = sg.view(n_rows, n_kv, width, groups, cols).permute(0, 2, 1, 3, 4)[feed.tok_slot, feed.tok_off]
    future = torch.arange(cols, device=sg.device)[None, :] > feed.tok_col[:, None]  # (Q, cols)
    parts.append(sg.masked_fill(future[:, None, None], torch.finfo(sg.dtype).min))
    weights = torch.cat(parts, dim=-1).float().softmax(-1).to(query.dtype)
    out = 0
    if cache.prompt_k is not None:
        wp = weights[..., :prompt_len]
        wu = ragged.scatter_padded(wp, feed.tok_user, feed.tok_uslot, n_users, uw, 0.0)
        wu = wu.permute(0, 2, 1, 3, 4).reshape(n_users, n_kv, uw * groups, prompt_len)
        op = torch.matmul(wu, pv).view(n_users, n_kv, uw, groups, dim).permute(0, 2, 1, 3, 4)
        out = op[feed.tok_user, feed.tok_uslot]
    wg = weights[..., weights.shape[-1] - cols:]
    wr = ragged.scatter_padded(wg, feed.tok_slot, feed.tok_off, n_rows, width, 0.0)
    wr = wr.permute(0, 2, 1, 3, 4).reshape(n_rows, n_kv, width * groups, cols)
    og = torch.matmul(wr, rv).view(n_rows, n_kv, width, groups, dim).permute(0, 2, 1, 3, 4)
    out = out + og[feed.tok_slot, feed.tok_off]  # (Q, Hkv, G, d)
    return out.reshape(1, q_len, n_heads, dim), None


AttentionInterface.register(NAME, shared_prefix_attention)


@contextmanager
def active(model, cache: SharedPrefixCache):
    """Route the model's attention through `shared_prefix_attention` with `cache` for the block."""
    global _active
    base = unwrap_peft(model)
    configs = {id(c): c for c in (base.config, *(getattr(m, "config", None) for m in base.modules())) if c is not None}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    outer = _active
    _active = cache
    try:
        for c in configs.values():
            c._attn_implementation = NAME
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
        _active = outer
