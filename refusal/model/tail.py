"""Forwards of a prompt batch's last tokens over the clean KV cache of the rest.

An edit that touches only a prompt's last ``tail`` tokens (circuit nodes on the post-instruction tokens) leaves every
earlier token as it was at every layer, attention being causal. So the KV cache of all but the last ``tail`` tokens
is computed once, without the edit, and each edited run forwards ``tail`` tokens per prompt over it: the same logits
at the last position, and the same gradients with respect to the tail's activations."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from refusal.model.chat import EncodedBatch
from refusal.model.hooks import capture_activations, decoder_layers, run_until_stop

PrefixKV = list[tuple[Tensor, Tensor]]  # per layer (keys, values) of the clean prefix


@torch.no_grad()
def prefix_kv(model: nn.Module, enc: EncodedBatch, tail: int) -> PrefixKV | None:
    """Per layer (keys, values) of the clean forward over all but the last ``tail`` tokens of ``enc`` (left-padded),
    or None when ``tail`` < 1 or a prompt of the batch is not longer than ``tail`` tokens (then run it whole)."""
    if tail < 1 or int(enc.n_tokens.min()) <= tail:
        return None
    cut = enc.seq_len - tail
    out = model(input_ids=enc.input_ids[:, :cut], attention_mask=enc.attention_mask[:, :cut],
                position_ids=enc.position_ids[:, :cut], use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in out.cache.layers]


def tail_forward(model: nn.Module, enc: EncodedBatch, kv: PrefixKV, resid: Tensor | None = None, start: int = 0,
                 **kwargs):
    """The model's output for the last tokens of ``enc`` (all but the ``kv`` prefix) over its cached prefix ``kv`` (a
    fresh cache per call: its update leaves ``kv`` as it is). With ``resid`` (those tokens' residual stream entering
    decoder layer ``start``, [B, tail, d]) only layers ``start..`` run. ``kwargs`` go to the model (e.g.
    ``logits_to_keep=1``)."""
    tail = enc.seq_len - int(kv[0][0].shape[-2])
    cache = DynamicCache(kv, config=model.config)
    common = {"attention_mask": enc.attention_mask, "position_ids": enc.position_ids[:, -tail:], "cache": cache,
              "use_cache": True, **kwargs}
    if resid is None:
        return model(input_ids=enc.input_ids[:, -tail:], **common)
    with without_first_layers(model, start):
        return model(inputs_embeds=resid, **common)


@torch.no_grad()
def tail_resid(model: nn.Module, enc: EncodedBatch, kv: PrefixKV, start: int) -> Tensor:
    """[B, tail, d] the clean residual stream entering decoder layer ``start`` at the tail tokens of ``enc``."""
    hook = f"blocks.{start}.hook_resid_pre"
    with capture_activations(model, [hook], stop_early=True) as got:
        run_until_stop(lambda: tail_forward(model, enc, kv, logits_to_keep=1))
    return got[hook]


@contextlib.contextmanager
def without_first_layers(model: nn.Module, start: int):
    """Inside, the model's decoder runs only layers ``start..`` (the same module objects, hooks included; each keeps
    its index into a KV cache)."""
    inner = model.model
    layers = decoder_layers(model)
    inner.layers = nn.ModuleList(list(layers)[start:])
    try:
        yield
    finally:
        inner.layers = layers
