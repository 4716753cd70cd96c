"""Exact memory and speed changes for fine-tuning a frozen base under LoRA (`prepare_for_training`
in `bearrec.training` applies them; `benchmarks/train_memory.py` measures them, docs/benchmarks.md).

- `compact_lora_dropout`: on the CPU, `torch.nn.functional.dropout` draws a float noise tensor of its
  input's shape (0 or 1/(1-p)) and multiplies, and autograd keeps that noise for backward: 4 bytes per
  element of the LoRA input, two per layer with LoRA on q and v (335 MB at batch 8 x 313 tokens with
  SmolLM2). `MaskDropout` draws the same noise from the same generator, multiplies the same way and
  keeps a bool mask instead (1 byte), rebuilding the same noise in backward: outputs and gradients
  bit-identical. Other devices keep `F.dropout` (CUDA's fused kernel already keeps a bool mask).
- `bf16_frozen_linears`: under bf16 autocast every `nn.Linear` casts its fp32 weight to bf16 on each
  call and the copy of a frozen one is kept for backward (the input gradient needs it); storing the
  frozen weights in bf16 saves those saved copies and the casts, and gives bit-identical results
  wherever autocast lowers the layer (the cast is the same rounding). Only for a run whose training
  and decoding both use bf16 autocast; the tied input embedding (read in fp32) stays fp32. A model
  loaded from safetensors reads its fp32 weights from a private memory map of the file (file-backed
  pages, resident once touched, shared between processes): the remaining frozen fp32 weights are
  copied out of it so that it closes, and the process holds 2 bytes per frozen linear weight instead
  of 4 of file-backed pages.
- `recompute_swiglu`: a Llama/Qwen2-style MLP, down(silu(gate(x)) * up(x)), keeps three
  (tokens x intermediate) tensors for backward: gate for silu, silu(gate) and up for the product.
  `SwiGLU` keeps gate and up and recomputes silu(gate) in backward (one cheap element-wise op per
  layer): the same operations on the same values, so outputs and gradients are bit-identical, with
  a third less MLP memory (220 MB at batch 8 x 313 tokens with SmolLM2). Not specific to LoRA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _MaskDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        noise = torch.empty_like(x).bernoulli_(1 - p)  # as at::dropout on the CPU: same draws
        ctx.save_for_backward(noise.bool())
        ctx.p = p
        return x * noise.div_(1 - p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * keep.to(grad.dtype).div_(1 - ctx.p), None


class MaskDropout(nn.Dropout):
    """`nn.Dropout` that keeps a bool mask for backward on the CPU (same values and gradients)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training or self.inplace or x.device.type != "cpu" or not 0 < self.p < 1
                or not x.is_floating_point() or x.numel() == 0):
            return F.dropout(x, self.p, self.training, self.inplace)
        return _MaskDropoutFn.apply(x, self.p)


def compact_lora_dropout(model: nn.Module) -> int:
    """Swap every LoRA layer's `nn.Dropout` for `MaskDropout`; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, d in list(dropouts.items()):
            if type(d) is nn.Dropout:
                new = MaskDropout(d.p, d.inplace)
                new.train(d.training)
                dropouts[name] = new
                swapped += 1
    return swapped


def bf16_frozen_linears(model: nn.Module) -> int:
    """Store the fp32 weights (and biases) of frozen `nn.Linear` layers in bf16, except a weight
    shared with the input embedding; returns how many layers. Only exact under bf16 autocast."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared = {id(p) for p in embed.parameters()} if embed is not None else set()
    changed = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        params = [p for p in (module.weight, module.bias) if p is not None]
        if any(p.requires_grad or p.dtype != torch.float32 or id(p) in shared for p in params):
            continue
        for p in params:
            p.data = p.data.to(torch.bfloat16)
        changed += 1
    if changed:  # the rest of the frozen fp32 weights leave the checkpoint's memory map, which can then close
        for p in model.parameters():
            if not p.requires_grad and p.dtype == torch.float32:
                p.data = p.data.clone()
    return changed


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up, keeping gate and up for backward (not silu(gate) too)."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:  # autograd's own: d(a * up)/da = grad * up, then silu's backward
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        if ctx.needs_input_grad[1]:
            grad_up = grad * F.silu(gate)
        return grad_gate, grad_up


def _swiglu_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def recompute_swiglu(model: nn.Module) -> int:
    """Give every MLP of the form down(silu(gate(x)) * up(x)) (Llama, Qwen2, Mistral, ...) the
    `SwiGLU` forward; returns how many."""
    from transformers.activations import SiLUActivation

    patched = 0
    for module in model.modules():
        if (all(isinstance(getattr(module, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj"))
                and type(getattr(module, "act_fn", None)) in (SiLUActivation, nn.SiLU)
                and type(module).forward.__qualname__.endswith("MLP.forward")
                and "forward" not in vars(module)):
            module.forward = _swiglu_forward.__get__(module)
            patched += 1
    return patched
