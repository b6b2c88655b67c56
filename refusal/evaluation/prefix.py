"""Forwards that reuse what interventions cannot change.

- Tail: when every active intervention edits only the last ``tail`` prompt tokens (circuit nodes live on the
  post-instruction tokens; refusal.evaluation.interventions.edited_tail), every earlier token is the same in every
  run at every layer (attention is causal), so the clean KV cache of the prompts minus their last ``tail`` tokens and
  the tail's residual stream entering layer ``start`` are computed once per batch, and each run forwards ``tail``
  tokens per prompt (a tenth of a chat prompt's tokens) through layers ``start..n-1`` only.
- Layer: else, when every intervention sits at layer ``start`` or later, the residual stream entering layer
  ``start`` is the same in every run, so it is computed once per prompt batch (on first use) and each run only pays
  for layers ``start..n-1`` (about half the cost for circuits at the middle layer).

Each shortcut is checked on the first batch against a full forward; a model it does not reproduce (Gemma scales its
embeddings, so ``inputs_embeds`` are not the residual stream) falls back to full forwards, with a warning.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from refusal.evaluation.interventions import edited_tail, prompt_continuation
from refusal.evaluation.measure import in_order
from refusal.model.chat import ChatFormatter, EncodedBatch, by_length
from refusal.model.hooks import capture_activations, decoder_layers, parse_hook_name, run_until_stop
from refusal.model.tail import PrefixKV, prefix_kv, tail_forward, tail_resid, without_first_layers

log = logging.getLogger(__name__)


class PrefixCachedLogits:
    """Logits at the last prompt token of fixed ``prompts``, from the clean KV cache of all but their last ``tail``
    tokens when the active interventions edit no earlier token, else from the residual stream entering decoder layer
    ``start``. Run it inside interventions at layers >= ``start`` only. Batches hold prompts of similar length (less
    padding); the logits come back in the prompts' order."""

    def __init__(self, model: nn.Module, formatter: ChatFormatter, prompts: list[str], batch_size: int, start: int,
                 tail: int = 0):
        if edited_tail() != 0:
            raise RuntimeError("PrefixCachedLogits caches clean forwards: construct it outside intervene blocks")
        self.model = model
        device = next(model.parameters()).device
        self.start, self.tail = max(0, int(start)), max(0, int(tail))
        self.order = by_length(prompts)
        ordered = [prompts[i] for i in self.order]
        self.batches: list[EncodedBatch] = [formatter.encode(ordered[i:i + batch_size]).to(device)
                                            for i in range(0, len(ordered), batch_size)]
        self._resids: list[Tensor | None] | None = None  # the layer shortcut's inputs, made on first use
        self._caches: list[tuple[PrefixKV, Tensor | None] | None] = [self._prefix(enc) for enc in self.batches]
        checked = next((b for b, kv in enumerate(self._caches) if kv is not None), None)
        if checked is not None and not self._agrees(self._tail_run(self.batches[checked], self._caches[checked]),
                                                    checked):
            log.warning("prefix cache: %s does not reproduce its forward from a cached prefix; using the residual "
                        "stream at layer %d", type(model).__name__, self.start)
            self.tail, self._caches = 0, [None] * len(self.batches)

    @torch.inference_mode()
    def _prefix(self, enc: EncodedBatch) -> tuple[PrefixKV, Tensor | None] | None:
        """(the clean KV cache of all but the last ``tail`` tokens, the tail's residual stream entering layer
        ``start`` or None at layer 0), or None (no tail, or a prompt of this batch is not longer than it)."""
        kv = prefix_kv(self.model, enc, self.tail)
        if kv is None:
            return None
        return kv, tail_resid(self.model, enc, kv, self.start) if self.start else None

    @torch.inference_mode()
    def _tail_run(self, enc: EncodedBatch, entry: tuple[PrefixKV, Tensor | None]) -> Tensor:
        kv, resid = entry
        with prompt_continuation():
            out = tail_forward(self.model, enc, kv, resid, self.start, logits_to_keep=1)
        return out.logits[:, -1].float().cpu()

    @torch.inference_mode()
    def _resid(self, enc: EncodedBatch) -> Tensor:
        """The residual stream entering layer ``start`` (> 0), read as layer ``start - 1``'s output: made on first
        use, maybe inside an intervention, and no intervention may sit before layer ``start``."""
        hook = f"blocks.{self.start - 1}.hook_resid_post"
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

    def _agrees(self, part: Tensor, b: int = 0) -> bool:
        """Whether ``part`` (logits of batch ``b`` by a shortcut, no intervention active) matches a full forward."""
        full = self._run(self.batches[b], None)
        return bool(torch.allclose(full, part, rtol=1e-4, atol=1e-4 * float(full.abs().max().clamp_min(1.0))))

    def _layer_inputs(self) -> list[Tensor | None]:
        if self._resids is None:
            self._resids = [self._resid(enc) if self.start else None for enc in self.batches]
            if self.start and self.batches and not self._agrees(self._run(self.batches[0], self._resids[0])):
                log.warning("prefix cache: %s does not reproduce its forward from layer %d; using full forwards",
                            type(self.model).__name__, self.start)
                self.start, self._resids = 0, [None] * len(self.batches)
        return self._resids

    def __call__(self) -> Tensor:
        """[n, vocab] float32 logits (run inside an ``intervene`` block to measure an intervention)."""
        edited = edited_tail()
        use_tail = self.tail and edited is not None and edited <= self.tail
        resids = None if use_tail else self._layer_inputs()
        out = []
        for b, enc in enumerate(self.batches):
            if use_tail and self._caches[b] is not None:
                out.append(self._tail_run(enc, self._caches[b]))
            else:
                out.append(self._run(enc, (resids or self._layer_inputs())[b]))
        return in_order(torch.cat(out), self.order) if out else torch.empty(0)


def first_layer(hooks, n_layers: int) -> int:
    """The lowest decoder layer of TransformerLens hook names (where their interventions start)."""
    return min((parse_hook_name(h, n_layers).layer for h in hooks), default=0)
