"""The component graph of a Llama-family decoder for edge attribution (refusal/evaluation/eap.py).

Senders write into the residual stream: the embeddings (``input``), each attention head (its slice of ``o_proj``:
z_h W_O,hᵀ) and each MLP. Receivers read it: each head (through ``input_layernorm``), each MLP (through
``post_attention_layernorm``) and the logits (through the final norm). Edge u→v exists when u writes before v reads.

:func:`split_forward` runs the model with every receiver reading its *own copy* of the residual stream (each head of
a layer gets a copy; the attention module is called once per head and only that head's output is kept), so the
gradient at a copy is ∂m/∂(input of v) through v alone, and a delta added to one copy reaches v alone (exact path
patching). Only the last ``n_pos`` tokens are edited (aligned from the end). Forward values equal the plain model's.
Models whose attention output is normed before the residual (Gemma2's ``pre_feedforward_layernorm``) are refused.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from refusal.behavior.score import refusal_score
from refusal.errors import ConfigError
from refusal.evaluation.patch_sites import _logits, head_dim, n_heads
from refusal.model.hooks import decoder_layers


@dataclass(frozen=True)
class Node:
    kind: str  # input | head | mlp | logits
    layer: int = -1
    index: int = 0

    @property
    def label(self) -> str:
        return {"input": "input", "logits": "logits", "head": f"L{self.layer}.H{self.index}",
                "mlp": f"L{self.layer}.MLP"}[self.kind]

    def stage(self, reading: bool) -> int:
        """Order in the residual stream: a sender writes at its stage, a receiver reads at its stage."""
        if self.kind == "input":
            return 0
        if self.kind == "logits":
            return 10**9
        return 2 * self.layer + (1 if self.kind == "head" else 2)


def graph(n_layers: int, heads: int) -> tuple[list[Node], list[Node], Tensor]:
    """(senders, receivers, mask [S, R] bool: the edges)."""
    comps = [n for layer in range(n_layers) for n in (*(Node("head", layer, h) for h in range(heads)),
                                                       Node("mlp", layer))]
    send, recv = [Node("input"), *comps], [*comps, Node("logits")]
    mask = torch.tensor([[u.stage(False) < v.stage(True) for v in recv] for u in send])
    return send, recv, mask


def _shift(x: Tensor, delta: Tensor, n_pos: int) -> Tensor:
    pad = torch.zeros_like(x)
    pad[:, -n_pos:] = delta.to(device=x.device, dtype=x.dtype)
    return x + pad


def _through(x: Tensor, target: Tensor | None, n_pos: int) -> Tensor:
    """x with its last n_pos tokens' value set to ``target``, the gradient still flowing through x."""
    return x if target is None else _shift(x, (target.to(x.device, x.dtype) - x[:, -n_pos:]).detach(), n_pos)


def _attention(attn, norm, L: int, heads: int, dh: int, reads: dict, adds: dict, targets: dict, n_pos: int):
    orig, prev = attn.forward, attn.__dict__.get("forward")
    cap: dict[str, Tensor] = {}
    handle = attn.o_proj.register_forward_pre_hook(lambda m, args: cap.__setitem__("z", args[0]))

    def forward(*args, **kw):
        x = reads.pop(("resid", L))
        zs = []
        for h in range(heads):
            node = Node("head", L, h)
            xh = x.clone()
            reads[node] = xh = _shift(xh, adds[node], n_pos) if node in adds else xh
            normed = norm.forward(xh)
            out = orig(normed, *args[1:], **kw) if args else orig(**{**kw, "hidden_states": normed})
            zs.append(_through(cap["z"][..., h * dh:(h + 1) * dh], targets.get(node), n_pos))
        return (F.linear(torch.cat(zs, -1), attn.o_proj.weight, attn.o_proj.bias), *out[1:])

    attn.forward = forward
    return handle, lambda: setattr(attn, "forward", prev) if prev is not None else delattr(attn, "forward")


@contextlib.contextmanager
def split_forward(model, n_pos: int, adds: dict | None = None, targets: dict | None = None) -> Iterator[dict]:
    """Inside, forwards run with per-receiver residual copies; the yielded dict maps each receiver Node to its input
    copy [B, T, d] of the last forward. ``adds``: {receiver: delta [B, n_pos, d]} added to that copy only.
    ``targets``: {sender: value [B, n_pos, W]} its output (a head: its z slice) is set to, gradient passing through."""
    adds, targets = adds or {}, targets or {}
    blocks, heads, dh = decoder_layers(model), n_heads(model), head_dim(model)
    if any(hasattr(b, "pre_feedforward_layernorm") for b in blocks):
        raise ConfigError(f"{type(model).__name__} norms the attention output; edge attribution needs additive heads")
    reads: dict = {}

    def reader(node):
        def pre(m, args):
            x = args[0].clone()
            reads[node] = x = _shift(x, adds[node], n_pos) if node in adds else x
            return (x, *args[1:])
        return pre

    handles = [model.get_input_embeddings().register_forward_hook(
        lambda m, a, out: _through(out.detach().requires_grad_(), targets.get(Node("input")), n_pos)),
        model.model.norm.register_forward_pre_hook(reader(Node("logits")))]
    restores = []
    for L, b in enumerate(blocks):
        handles.append(b.input_layernorm.register_forward_pre_hook(
            lambda m, args, L=L: reads.__setitem__(("resid", L), args[0])))
        h, restore = _attention(b.self_attn, b.input_layernorm, L, heads, dh, reads, adds, targets, n_pos)
        handles.append(h)
        restores.append(restore)
        handles.append(b.post_attention_layernorm.register_forward_pre_hook(reader(Node("mlp", L))))
        handles.append(b.mlp.register_forward_hook(
            lambda m, a, out, L=L: _through(out, targets.get(Node("mlp", L)), n_pos)))
    try:
        yield reads
    finally:
        for h in handles:
            h.remove()
        for restore in restores:
            restore()


def receiver_grads(ctx, enc, recv: list[Node], n_pos: int, targets: dict | None = None) -> tuple[Tensor, Tensor]:
    """([R, B, n_pos, d] float32 ∂Σm/∂(input of each receiver) at the last n_pos tokens, [B] float64 scores m)."""
    with torch.enable_grad(), split_forward(ctx.model, n_pos, targets=targets) as reads:
        m = refusal_score(_logits(ctx.model, enc), ctx.refusal_token_ids)
        grads = torch.autograd.grad(m.sum(), [reads[v] for v in recv])
    return torch.stack([g[:, -n_pos:].float() for g in grads]).cpu(), m.detach().cpu()


@torch.no_grad()
def path_patched(ctx, enc, receiver: Node | None, deltas: Tensor) -> Tensor:
    """[E, B] float64 refusal scores of the batch ``enc`` with each of ``deltas`` [E, B, n_pos, d] added to
    ``receiver``'s input alone (E copies of the batch in one forward); ``receiver`` None: [1, B] unpatched."""
    E, B, n_pos = deltas.shape[:3]
    inputs = {k: v.repeat(E, *([1] * (v.dim() - 1))) for k, v in enc.model_inputs().items()}
    adds = {receiver: deltas.reshape(E * B, n_pos, -1)} if receiver is not None else None
    with split_forward(ctx.model, n_pos, adds=adds):
        logits = ctx.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
    return refusal_score(logits, ctx.refusal_token_ids).cpu().view(E, B)
