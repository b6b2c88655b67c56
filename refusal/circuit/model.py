"""A chat model with SAEs at its hooked points: encode prompts, run with splices, read the metric."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from refusal.circuit.nodes import node_position_count
from refusal.circuit.splice import HookedSAE, run_model, splice
from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter, EncodedBatch
from refusal.model.tail import PrefixKV, prefix_kv
from refusal.utils.progress import progress

Values = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class CircuitModel:
    model: nn.Module
    formatter: ChatFormatter
    saes: dict[str, HookedSAE]  # hook -> SAE, in model order
    positions: str
    metric: Callable[[torch.Tensor], torch.Tensor]
    batch_size: int = 8

    def __post_init__(self):
        self.device = next(self.model.parameters()).device
        self.n_positions = node_position_count(self.formatter.encode(["x"]), self.positions)
        self._kv: tuple[EncodedBatch, PrefixKV | None] | None = None

    @property
    def hooks(self) -> list[str]:
        return list(self.saes)

    def encode(self, prompts: list[str]) -> EncodedBatch:
        enc = self.formatter.encode(prompts).to(self.device)
        if node_position_count(enc, self.positions) != self.n_positions:
            raise ConfigError(f"prompts have {node_position_count(enc, self.positions)} post-instruction tokens, "
                              f"expected {self.n_positions}; the chat template suffix must not depend on the prompt")
        return enc

    def batches(self, prompts: list[str]):
        """(row indices, encoded batch) over ``prompts`` in order."""
        with progress(len(prompts), "attribute") as bar:
            for start in range(0, len(prompts), self.batch_size):
                rows = list(range(start, min(start + self.batch_size, len(prompts))))
                yield rows, self.encode([prompts[i] for i in rows])
                bar.update(len(rows))

    def _prefix(self, enc: EncodedBatch) -> PrefixKV | None:
        """The clean KV cache of ``enc`` minus its node positions (refusal.model.tail), kept for the batch last asked
        about: the splices edit only the node positions, so every run on a batch shares it."""
        if self._kv is None or self._kv[0] is not enc:
            self._kv = (enc, prefix_kv(self.model, enc, self.n_positions))
        return self._kv[1]

    def run(self, enc: EncodedBatch, modes: dict[str, str], values: Values | None = None, grad: bool = False):
        """(metric [B] or None if stopped early, {hook: (f, e)}). Only the node positions are forwarded, over the
        batch's clean cached prefix (same metric, same gradients at the nodes)."""
        kv = self._prefix(enc)
        with torch.set_grad_enabled(grad), splice(self.model, self.saes, self.n_positions, modes, values) as rec:
            logits = run_model(self.model, enc, kv)
            m = None if logits is None else self.metric(logits)
        return m, rec

    @torch.no_grad()
    def values(self, enc: EncodedBatch) -> Values:
        """Clean node values only (no metric): the forward stops after the last hooked layer."""
        with splice(self.model, self.saes, self.n_positions, {h: "observe" for h in self.hooks}) as rec:
            run_model(self.model, enc)
        return {h: rec[h] for h in self.hooks}

    def capture(self, enc: EncodedBatch) -> tuple[torch.Tensor, Values]:
        """Clean metric and node values (no grad)."""
        return self.run(enc, {h: "capture" for h in self.hooks})

    def read(self, enc: EncodedBatch) -> tuple[torch.Tensor, Values, Values]:
        """Clean metric, clean node values and dm/d(node) for every node of every hook: one forward + backward."""
        m, rec = self.run(enc, {h: "read" for h in self.hooks}, grad=True)
        leaves = [t for h in self.hooks for t in rec[h]]
        grads = torch.autograd.grad(m.sum(), leaves, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
        clean = {h: (rec[h][0].detach(), rec[h][1].detach()) for h in self.hooks}
        g = {h: (grads[2 * i], grads[2 * i + 1]) for i, h in enumerate(self.hooks)}
        return m.detach(), clean, g

    def patched(self, enc: EncodedBatch, values: Values) -> torch.Tensor:
        """Metric with every hook's node values set to ``values``."""
        return self.run(enc, {h: "set" for h in values}, values)[0]
