"""Float32 arithmetic whose bits do not depend on the CPU's vector width, for the organism's build.

ATen's fused softmax, log-softmax and scaled-dot-product-attention kernels reduce in an order set by the SIMD width,
so a CPU with AVX-512 and one with AVX2 only round them differently, and after a fine-tune the two hold different
organisms under one cache key. The same functions written with amax, exp, sum and matmul give the same bits under
ATEN_CPU_CAPABILITY=avx512 and avx2 (tests/organism/test_organism_numerics.py). The build runs the model with
``attention`` (eager attention, this softmax) and its loss with ``logsumexp``; the saved organism is loaded with the
model's usual attention."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTENTION = "organism_portable"


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim from amax, exp and sum (no fused kernel)."""
    e = torch.exp(x - x.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention (transformers' attention-function signature) with ``softmax``; ``attention_mask`` is the
    additive float mask of eager attention."""
    groups = module.num_key_value_groups
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = softmax(weights)
    if dropout:
        weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)  # without a mask function, transformers passes no mask


@contextmanager
def portable_attention(model):
    """``model`` runs ``attention`` inside the block; its own attention implementation is restored after."""
    before = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)
