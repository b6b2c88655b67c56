"""Feature density: how often each SAE latent fires on the validation tokens, logged as a W&B histogram of
log10 frequency per hook at each validation end (``val/<hook>/feature_density``; the SAELens convention:
log10(frequency + 1e-10), so a latent that never fired sits at -10).

A healthy SAE has most latents between 1e-4 and 1e-1; a spike at -10 is dead latents, mass near 0 dense ones.
"""
from __future__ import annotations

import logging

import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from torch import Tensor
from torchmetrics import Metric

log = logging.getLogger(__name__)
LOG10_EPS = 1e-10


class FiringCounts(Metric):
    """Per-latent firing frequency over an epoch: the fraction of tokens on which each latent is active (summed
    over DDP ranks by torchmetrics; not saved in checkpoints)."""
    full_state_update = False

    def __init__(self, d_sae: int):
        super().__init__()
        self.add_state("fired", torch.zeros(d_sae, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, counts: Tensor, n_tokens: int) -> None:
        """``counts`` [d_sae]: on how many of the batch's ``n_tokens`` tokens each latent was active."""
        self.fired += counts.to(self.fired.dtype)
        self.tokens += n_tokens

    def compute(self) -> Tensor:
        return self.fired / self.tokens.clamp_min(1)


def log10_density(freq: Tensor) -> Tensor:
    return torch.log10(freq.double() + LOG10_EPS)


def log_feature_density(loggers: list[Logger], freqs: dict[str, Tensor], step: int) -> None:
    """Log ``{hook: frequency [d_sae]}`` as one histogram of log10 frequency per hook to every W&B logger (other
    loggers have no histograms). Never fatal."""
    runs = [lg.experiment for lg in loggers if isinstance(lg, WandbLogger)]
    if not runs or not freqs:
        return
    try:
        import wandb

        data = {f"val/{hook}/feature_density": wandb.Histogram(log10_density(f).cpu().numpy(), num_bins=64)
                for hook, f in freqs.items()}
        for run in runs:
            run.log({**data, "trainer/global_step": step})  # WandbLogger's step axis
    except Exception as e:
        log.warning("could not log the feature density histograms (%s)", str(e).splitlines()[0])
