"""LRP-linearised backward pass (Ali et al. 2022, "XAI for Transformers: Better Explanations through Conservative
Propagation"; Achtibat et al. 2024, "AttnLRP"): inside :func:`lrp_linearised` the model computes the very same
forward values (attention runs eager), but its backward is that of a model in which every non-linearity that would
break relevance conservation is frozen at its clean value, so gradient × activation is a conservative relevance:

- **RMSNorm**: y = w ⊙ x · s(x) with s = 1/sqrt(mean(x²) + eps); s is detached (kept in the forward, treated as a
  constant in the backward), so the norm is a linear map x ↦ w ⊙ s·x (Ali et al.'s LN-rule).
- **Attention**: eager attention with the softmax probabilities detached (the AH-rule): the output A·V is linear in
  V; the query/key paths carry no gradient. Rotary embeddings only act on queries and keys, so they drop out.
- **MLP activation** act(z) (SiLU, GELU...): the identity rule, i.e. gradient act(z)/z (for SiLU: σ(z)), so that
  z · ∂act = act(z).
- **gate × up product** p = act(gate)·up: the half (uniform) rule: ∂p/∂g = ½·u and ∂p/∂u = ½·g, so each factor
  receives half of p's relevance (g·½u + u·½g = p).
Every one of these is written value-exactly as ``v.detach() + (x − x.detach()) · c`` (the added term is exactly 0
in the forward), so forward values are bit-identical to a plain eager forward.

What is conserved: with these rules the map from any cut through the network (e.g. the residual stream entering
the MLP of layer L plus that MLP's neurons, at every position) to the logits is linear in the gradient × input sense
and Llama has no biases, so Σ_inputs x·∇'logit = logit exactly (up to float rounding); a metric linear in the
logits (``logit_diff``) is conserved the same way. For a non-linear metric (``refusal_score``) the metric's own
gradient w.r.t. the logits is used as is (the usual LRP start: relevance = ∂m/∂logits ⊙ logits).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from refusal.errors import ConfigError

IMPL = "lrp_eager"


def _linear(value: torch.Tensor, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward, gradient ``slope`` w.r.t. ``x`` in the backward."""
    return value.detach() + (x - x.detach()) * slope.detach()


def rmsnorm_forward(norm: nn.Module):
    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).detach()
        return norm.weight * (x * scale).to(dtype)
    return forward


def half_product(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """g·u with the half rule: ∂/∂g = u/2, ∂/∂u = g/2 (value exactly g·u)."""
    p = g * u
    return p.detach() + 0.5 * (g - g.detach()) * u.detach() + 0.5 * g.detach() * (u - u.detach())


def identity_act(act, z: torch.Tensor) -> torch.Tensor:
    """act(z) with gradient act(z)/z (the identity rule; at z = 0 the slope is act'(0) = ½ for SiLU/GELU)."""
    a = act(z)
    safe = torch.where(z == 0, torch.ones_like(z), z)
    slope = torch.where(z == 0, torch.full_like(z, 0.5), a / safe)
    return _linear(a, z, slope)


def mlp_forward(mlp: nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return mlp.down_proj(half_product(identity_act(mlp.act_fn, mlp.gate_proj(x)), mlp.up_proj(x)))
    return forward


def lrp_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """HF eager attention with the softmax probabilities detached."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    key = key.repeat_interleave(n_rep, dim=1) if n_rep > 1 else key
    value = value.repeat_interleave(n_rep, dim=1) if n_rep > 1 else value
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype).detach()
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    AttentionInterface.register(IMPL, lrp_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPL, eager_mask)


def _targets(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    norms, mlps = [], []
    for m in model.modules():
        name = type(m).__name__
        if name.endswith("RMSNorm"):
            if name.startswith("Gemma") or not hasattr(m, "variance_epsilon"):
                raise ConfigError(f"circuit.attribution_method=lrp supports Llama-style RMSNorm (weight · x/rms); "
                                  f"the model has {name}")
            norms.append(m)
        elif all(hasattr(m, k) for k in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            mlps.append(m)
    return norms, mlps


@contextlib.contextmanager
def lrp_linearised(model: nn.Module):
    """Run forwards inside with the LRP-linearised backward described in the module docstring."""
    _register()
    norms, mlps = _targets(model)
    config = model.config
    previous = config._attn_implementation
    patched = [(m, rmsnorm_forward(m)) for m in norms] + [(m, mlp_forward(m)) for m in mlps]
    try:
        config._attn_implementation = IMPL
        for m, fn in patched:
            m.forward = fn
        yield
    finally:
        config._attn_implementation = previous
        for m, _ in patched:
            m.__dict__.pop("forward", None)
