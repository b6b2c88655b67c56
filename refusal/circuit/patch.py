"""Patch sources: the node values a clean prompt's nodes are compared with (IE ≈ (a_clean − a_patch)·∂m/∂a).

- ``mean_safe``: the mean node values of the contrast prompts at the same aligned positions. For toxic
  (clean) prompts the contrast is the safe prompts; for the safe circuits, which explain why the model does *not*
  refuse, the contrast is reversed: the mean over the toxic prompts.
- ``zero``: f = 0 and e = 0 (the activation becomes the SAE's b_dec).
- ``paired``: clean prompt i of the discovery split is paired with contrast prompt ``i mod n`` of the same split
  (both in prompts.jsonl order); its node values at the same aligned positions.
"""
from __future__ import annotations

import torch

from refusal.circuit.model import CircuitModel, Values
from refusal.errors import ConfigError, check_choice

PATCHES = ("mean_safe", "zero", "paired")


@torch.no_grad()
def value_sums(cm: CircuitModel, prompts: list[str]) -> Values:
    """Node values summed over ``prompts`` in float64: {hook: ([1, P, d_sae], [1, P, d])}."""
    sums: Values = {}
    for _, enc in cm.batches(prompts):
        for h, (f, e) in cm.values(enc).items():
            part = (f.double().sum(0, keepdim=True), e.double().sum(0, keepdim=True))
            sums[h] = part if h not in sums else (sums[h][0] + part[0], sums[h][1] + part[1])
    return sums


def mean_values(cm: CircuitModel, prompts: list[str]) -> Values:
    """Mean node values over ``prompts``: {hook: ([1, P, d_sae], [1, P, d])}."""
    if not prompts:
        raise ConfigError("circuit.patch=mean_safe needs contrast prompts in the discovery split; there are none")
    return {h: (f.div(len(prompts)).float(), e.div(len(prompts)).float())
            for h, (f, e) in value_sums(cm, prompts).items()}


class PatchSource:
    """Patch values for rows of a list of clean prompts."""

    def __init__(self, kind: str, cm: CircuitModel, contrast_prompts: list[str], contrast_ids: list[str] | None = None):
        check_choice("circuit.patch", kind, PATCHES)
        self.kind, self.cm, self.contrast = kind, cm, contrast_prompts
        self.contrast_ids = contrast_ids
        if kind == "paired" and not contrast_prompts:
            raise ConfigError("circuit.patch=paired needs contrast prompts in the discovery split; there are none")
        self.mean = mean_values(cm, contrast_prompts) if kind == "mean_safe" else None

    def values(self, rows: list[int], clean: Values) -> Values:
        if self.kind == "mean_safe":
            return {h: (f.to(clean[h][0].dtype), e.to(clean[h][1].dtype)) for h, (f, e) in self.mean.items()}
        if self.kind == "zero":
            return {h: (torch.zeros_like(f[:1]), torch.zeros_like(e[:1])) for h, (f, e) in clean.items()}
        paired = [self.contrast[i % len(self.contrast)] for i in rows]
        return self.cm.values(self.cm.encode(paired))

    def paired_ids(self, rows: list[int]) -> list[str] | None:
        """The contrast prompt id each clean row is paired with (paired patches with ids only)."""
        if self.kind != "paired" or self.contrast_ids is None:
            return None
        return [self.contrast_ids[i % len(self.contrast_ids)] for i in rows]
