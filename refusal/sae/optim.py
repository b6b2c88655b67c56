"""Adam and the learning-rate schedule (linear warm-up, then constant or linear/cosine decay to 0).

Gradient clipping is not here: it is the Trainer's ``gradient_clip_val``.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from refusal.sae.config import SAEConfig


FUSED_DEVICES = ("cpu", "cuda")


def _fusable(p: torch.Tensor) -> bool:
    return p.device.type in FUSED_DEVICES and p.dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)


class LRSchedule:
    """Multiplier of the base lr at optimizer step ``step`` (a picklable callable for LambdaLR)."""

    def __init__(self, warmup_steps: int, decay: str, decay_start: float, total_steps: int):
        self.warmup_steps, self.decay, self.total_steps = warmup_steps, decay, total_steps
        self.decay_start = int(decay_start * total_steps)

    def __call__(self, step: int) -> float:
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.decay == "none" or step < self.decay_start:
            return factor
        progress = min(1.0, (step - self.decay_start) / max(1, self.total_steps - self.decay_start))
        if self.decay == "linear":
            return factor * (1.0 - progress)
        return factor * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: SAEConfig, total_steps: int):
    """Adam, fused (one kernel per tensor: 7x faster than the default on CPU at d_sae 32768, where the step is
    memory-bound) wherever torch has the fused kernel for the parameters' device and dtype."""
    params = list(params)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, fused=all(_fusable(p) for p in params) or None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, LRSchedule(cfg.lr_warmup_steps, cfg.lr_decay, cfg.lr_decay_start, total_steps))
    return opt, sched
