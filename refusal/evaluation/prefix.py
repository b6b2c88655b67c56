"""Forwards that start at a decoder layer: when every intervention sits at layer ``start`` or later, the residual
stream entering layer ``start`` is the same in every run, so it is computed once per prompt batch and each run
only pays for layers ``start..n-1`` (about half the cost for circuits at the middle layer).

The first batch is checked against a full forward at construction; a model whose forward does more to its
embeddings than look them up (Gemma scales them) fails the check and falls back to full forwards.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor, nn

from refusal.evaluation.measure import in_order
from refusal.model.chat import ChatFormatter, EncodedBatch, by_length
from refusal.model.hooks import capture_activations, decoder_layers, parse_hook_name, run_until_stop

log = logging.getLogger(__name__)


@contextlib.contextmanager
def without_first_layers(model: nn.Module, start: int):
    """Inside, the model's decoder runs only layers ``start..`` (the same module objects, hooks included)."""
    inner = model.model
    layers = decoder_layers(model)
    inner.layers = nn.ModuleList(list(layers)[start:])
    try:
        yield
    finally:
        inner.layers = layers


class PrefixCachedLogits:
    """Logits at the last prompt token of fixed ``prompts``, computed from the residual stream entering decoder
    layer ``start`` (cached at construction). Run it inside interventions at layers >= ``start`` only. Batches hold
    prompts of similar length (less padding); the logits come back in the prompts' order."""

    def __init__(self, model: nn.Module, formatter: ChatFormatter, prompts: list[str], batch_size: int, start: int):
        self.model = model
        device = next(model.parameters()).device
        self.batches: list[tuple[EncodedBatch, Tensor | None]] = []
        self.start = max(0, int(start))
        self.order = by_length(prompts)
        ordered = [prompts[i] for i in self.order]
        for i in range(0, len(ordered), batch_size):
            enc = formatter.encode(ordered[i:i + batch_size]).to(device)
            self.batches.append((enc, self._resid(enc) if self.start else None))
        if self.start and self.batches and not self._check():
            log.warning("prefix cache: %s does not reproduce its forward from layer %d; using full forwards",
                        type(model).__name__, self.start)
            self.start = 0
            self.batches = [(enc, None) for enc, _ in self.batches]

    @torch.inference_mode()
    def _resid(self, enc: EncodedBatch) -> Tensor:
        hook = f"blocks.{self.start}.hook_resid_pre"
        with capture_activations(self.model, [hook], stop_early=True) as cache:
            run_until_stop(lambda: self.model(**enc.model_inputs(), use_cache=False))
        return cache[hook]

    @torch.inference_mode()
    def _run(self, enc: EncodedBatch, resid: Tensor | None) -> Tensor:
        if resid is None:
            out = self.model(**enc.model_inputs(), use_cache=False, logits_to_keep=1)
        else:
            with without_first_layers(self.model, self.start):
                out = self.model(inputs_embeds=resid, attention_mask=enc.attention_mask,
                                 position_ids=enc.position_ids, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1].float().cpu()

    def _check(self) -> bool:
        enc, resid = self.batches[0]
        full, part = self._run(enc, None), self._run(enc, resid)
        return bool(torch.allclose(full, part, rtol=1e-4, atol=1e-4 * float(full.abs().max().clamp_min(1.0))))

    def __call__(self) -> Tensor:
        """[n, vocab] float32 logits (run inside an ``intervene`` block to measure an intervention)."""
        out = [self._run(enc, resid) for enc, resid in self.batches]
        return in_order(torch.cat(out), self.order) if out else torch.empty(0)


def first_layer(hooks, n_layers: int) -> int:
    """The lowest decoder layer of TransformerLens hook names (where their interventions start)."""
    return min((parse_hook_name(h, n_layers).layer for h in hooks), default=0)
