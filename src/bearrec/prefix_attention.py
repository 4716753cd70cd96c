"""Shared-prefix attention for beam search: the prompt's keys/values are stored once per user,
the generated tokens' per beam, and attention combines both in one softmax.

Hugging Face's cache holds a full copy of the prompt per beam and copies all of it at every step
(`reorder_cache` gathers, `update` concatenates): with a ~200-token prompt and ~15 generated tokens
that copying costs as much as the forward pass. Here a step reorders only the generated part.

Used for decoder-only models whose attention goes through `ALL_ATTENTION_FUNCTIONS` with plain
scaled dot-product semantics (`SUPPORTED`); anything else keeps the ordinary cache. The math is
the eager attention's, so results equal it to rounding.
"""

from __future__ import annotations

from contextlib import contextmanager

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


class SharedPrefixCache:
    """Duck-typed cache: prompt K/V per user (from a prefilled DynamicCache), generated K/V per beam."""

    def __init__(self, prefill_cache, prompt_mask: torch.Tensor):
        layers = prefill_cache.layers
        self.prompt_k = [layer.keys for layer in layers]  # (N, Hkv, L, d)
        self.prompt_v = [layer.values for layer in layers]
        dtype = self.prompt_k[0].dtype
        bias = torch.zeros(prompt_mask.shape, dtype=dtype, device=self.prompt_k[0].device)
        self.prompt_bias = bias.masked_fill(prompt_mask.to(bias.device) == 0, torch.finfo(dtype).min)[:, None, None]
        self.gen_k: list[torch.Tensor | None] = [None] * len(layers)
        self.gen_v: list[torch.Tensor | None] = [None] * len(layers)
        self.set_beams(torch.arange(prompt_mask.shape[0]))

    def set_beams(self, beam_user: torch.Tensor) -> None:
        """`beam_user`: the user of each live beam, grouped by user (the decoder keeps that order)."""
        device = self.prompt_k[0].device
        counts = torch.bincount(beam_user, minlength=self.prompt_k[0].shape[0])
        self.user = beam_user.to(device)
        self.slot = ragged.segment_offsets(counts, beam_user).to(device)
        self.width = ragged.padded_width(counts, min_width=1)

    def reorder_cache(self, parent: torch.Tensor) -> None:
        parent = parent.to(self.prompt_k[0].device)
        for i in range(len(self.gen_k)):
            if self.gen_k[i] is not None:
                self.gen_k[i] = self.gen_k[i].index_select(0, parent)
                self.gen_v[i] = self.gen_v[i].index_select(0, parent)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.gen_k[layer_idx] is None:
            self.gen_k[layer_idx], self.gen_v[layer_idx] = key_states, value_states
        else:
            self.gen_k[layer_idx] = torch.cat([self.gen_k[layer_idx], key_states], dim=2)
            self.gen_v[layer_idx] = torch.cat([self.gen_v[layer_idx], value_states], dim=2)
        return self.gen_k[layer_idx], self.gen_v[layer_idx]


def _to_users(x: torch.Tensor, cache: SharedPrefixCache) -> torch.Tensor:
    """(M, ...) per beam -> (N, width, ...) per user, zero-padded."""
    return ragged.scatter_padded(x, cache.user, cache.slot, cache.prompt_k[0].shape[0], cache.width, 0.0)


def shared_prefix_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query (M, H, 1, d); key/value: the beams' generated K/V (M, Hkv, t, d)."""
    cache = _active
    pk, pv = cache.prompt_k[module.layer_idx], cache.prompt_v[module.layer_idx]
    n_users, n_kv, prompt_len, dim = pk.shape
    m, n_heads = query.shape[:2]
    groups = n_heads // n_kv
    q = query.reshape(m, n_kv, groups, dim)
    width = cache.width
    qu = _to_users(q, cache).permute(0, 2, 1, 3, 4).reshape(n_users, n_kv, width * groups, dim)
    sp = torch.matmul(qu, pk.transpose(2, 3)) * scaling + cache.prompt_bias
    sp = sp.view(n_users, n_kv, width, groups, prompt_len).permute(0, 2, 1, 3, 4)[cache.user, cache.slot]
    sg = torch.matmul(q, key.transpose(2, 3)) * scaling  # (M, Hkv, G, t)
    weights = torch.cat([sp, sg], dim=-1).float().softmax(-1).to(query.dtype)
    wp, wg = weights[..., :prompt_len], weights[..., prompt_len:]
    wu = _to_users(wp, cache).permute(0, 2, 1, 3, 4).reshape(n_users, n_kv, width * groups, prompt_len)
    op = torch.matmul(wu, pv).view(n_users, n_kv, width, groups, dim).permute(0, 2, 1, 3, 4)[cache.user, cache.slot]
    out = op + torch.matmul(wg, value)  # (M, Hkv, G, d)
    return out.reshape(m, n_heads, 1, dim).transpose(1, 2), None


AttentionInterface.register(NAME, shared_prefix_attention)


@contextmanager
def active(model, cache: SharedPrefixCache):
    """Route the model's attention through `shared_prefix_attention` with `cache` for the block."""
    global _active
    base = unwrap_peft(model)
    configs = {id(c): c for c in (base.config, *(getattr(m, "config", None) for m in base.modules())) if c is not None}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    _active = cache
    try:
        for c in configs.values():
            c._attn_implementation = NAME
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
        _active = None
