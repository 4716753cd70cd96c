"""The exact training changes of bearrec.frozen: bit-identical values and gradients, less kept."""

import pytest
import torch
from torch import nn

from bearrec.config import LoraConfig, TinyModelConfig
from bearrec.frozen import MaskDropout, SwiGLU, bf16_frozen_linears, compact_lora_dropout, recompute_swiglu
from bearrec.modeling import apply_lora, build_tiny_model


def _kept(fn, *args):
    """fn(*args) and the bytes autograd keeps for its backward (each storage once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(*args)
    return y, sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_dropout_matches_dropout_bit_for_bit_and_keeps_a_bool_mask(dtype):
    x0 = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = []
    for module in (nn.Dropout(0.3), MaskDropout(0.3)):
        x = x0.clone().requires_grad_()
        torch.manual_seed(7)
        y, kept = _kept(module, x)
        (y.float() * torch.arange(48.0)).sum().backward()
        out.append((y.detach(), x.grad, kept))
    (y_ref, g_ref, kept_ref), (y_new, g_new, kept_new) = out
    assert torch.equal(y_ref, y_new) and torch.equal(g_ref, g_new)
    assert kept_new == x0.numel() and kept_ref == x0.numel() * x0.element_size()  # bool vs the noise


def test_mask_dropout_is_the_identity_in_eval_and_at_p_zero():
    x = torch.randn(5, 3)
    assert MaskDropout(0.5).eval()(x) is x
    assert torch.equal(MaskDropout(0.0)(x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_matches_autograd_bit_for_bit_and_keeps_two_tensors(dtype):
    gen = torch.Generator().manual_seed(1)
    g0, u0 = (torch.randn(32, 40, generator=gen).to(dtype) for _ in range(2))
    out = []
    for fn in (lambda g, u: nn.functional.silu(g) * u, SwiGLU.apply):
        g, u = g0.clone().requires_grad_(), u0.clone().requires_grad_()
        y, kept = _kept(fn, g, u)
        (y.float() * torch.linspace(-1, 1, 40)).sum().backward()
        out.append((y.detach(), g.grad, u.grad, kept))
    for a, b in zip(out[0][:3], out[1][:3]):
        assert torch.equal(a, b)
    assert out[1][3] == 2 * g0.numel() * g0.element_size() < out[0][3]


def _tiny_lora(dropout=0.1, seed=0):
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, architecture="llama")
    model = build_tiny_model(cfg, vocab_size=50, eos_token_id=0, seed=seed)
    return apply_lora(model, LoraConfig(r=4, alpha=8, dropout=dropout, target_modules=["q_proj", "v_proj"]))


def _step(model, autocast: bool):
    model.train()
    model.zero_grad(set_to_none=True)
    ids = torch.randint(1, 50, (3, 11), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, use_cache=False).logits
        loss = nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, 50), ids[:, 1:].reshape(-1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("autocast", [False, True])
def test_lora_model_changes_nothing_computed(autocast):
    before, after = _tiny_lora(), _tiny_lora()
    assert compact_lora_dropout(after) == 4 and recompute_swiglu(after) == 2
    if autocast:
        assert bf16_frozen_linears(after) == 2 * 7  # q, k, v, o, gate, up, down (q and v: their base layers)
    (l0, g0), (l1, g1) = _step(before, autocast), _step(after, autocast)
    assert torch.equal(l0, l1) and g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)


def test_bf16_frozen_linears_leaves_trainable_and_embedding_weights_alone():
    model = _tiny_lora()
    bf16_frozen_linears(model)
    for name, p in model.named_parameters():
        if p.requires_grad or "embed" in name or "norm" in name:
            assert p.dtype == torch.float32, name
        elif name.endswith("weight") and "proj" in name:
            assert p.dtype == torch.bfloat16, name
    head = model.get_output_embeddings().weight
    assert head is model.get_input_embeddings().weight and head.dtype == torch.float32  # tied: stays fp32


def test_a_fully_trained_model_has_no_frozen_linears_to_change():
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                             vocab_size=50, eos_token_id=0)
    assert bf16_frozen_linears(model) == 0 and compact_lora_dropout(model) == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
