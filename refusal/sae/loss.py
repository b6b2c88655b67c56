"""The SAE training objective, shared by the LightningModule and the bench's bare loop.

All terms are in scaled units (inputs multiplied by ``input_scale`` so E‖s·x‖ = √d_in):
- ``mse``: mean over tokens and dimensions of (s·x − x̂_s)²  (≈ fraction of input energy left unexplained).
- ``aux`` (topk / batchtopk): aux_coeff · ‖e − ê‖² / ‖e − ē‖², where e = s·x − x̂_s (detached) and ê decodes
  e (no b_dec) from the top ``aux_k`` ReLU'd pre-activations among dead latents (not fired for more than
  ``dead_tokens_threshold`` tokens); 0 when no latent is dead. On an accelerator it is computed every training
  step (no host sync); on CPU only while some latent is dead. Not computed in eval mode. Under DDP its
  normaliser is the global batch's (see ``auxk_loss``).
- ``sparsity`` (relu_l1): λ(step) · mean over tokens of Σ_i f_i ‖W_dec[i]‖, λ rising linearly from 0 at step 0
  to ``l1_coeff`` at ``sparsity_warmup_steps``.
Calling ``sae_loss`` in train mode also updates the dead-latent counters (and the batchtopk threshold).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from refusal.sae.config import SAEConfig
from refusal.sae.model import SparseAutoencoder
from refusal.sae.ranks import sum_over_ranks, world_size


@dataclass
class LossTerms:
    """Scalar terms; x_s, x_hat_s [B, d_in] in scaled units; f [B, d_sae] codes."""
    loss: Tensor
    mse: Tensor
    aux: Tensor
    sparsity: Tensor
    x_s: Tensor
    x_hat_s: Tensor
    f: Tensor


def l1_lambda(cfg: SAEConfig, step: int) -> float:
    if cfg.sparsity_warmup_steps == 0:
        return cfg.l1_coeff
    return cfg.l1_coeff * min(1.0, step / cfg.sparsity_warmup_steps)


def sae_loss(sae: SparseAutoencoder, x: Tensor, cfg: SAEConfig, step: int) -> LossTerms:
    x_s = x.to(sae.W_enc.dtype) * sae.input_scale
    pre = sae.pre_acts(x_s)
    f = sae.activate(pre)
    x_hat_s = sae.decode_scaled(f)
    mse = (x_hat_s - x_s).pow(2).mean()
    zero = mse.new_zeros(())
    aux = sparsity = zero
    if sae.training:
        sae.record_firing(f)
        if sae.architecture == "batchtopk":
            sae.update_threshold(f)
    if sae.training and cfg.architecture in ("topk", "batchtopk") and cfg.aux_coeff > 0:
        dead = sae.dead_mask(cfg.dead_tokens_threshold)
        # on CPU the check costs nothing: skip the aux pass (its value is 0) while no latent is dead
        if dead.device.type != "cpu" or bool(dead.any()):
            aux = cfg.aux_coeff * auxk_loss(sae, pre, (x_s - x_hat_s).detach(), dead, cfg.aux_k)
    elif cfg.architecture == "relu_l1":
        sparsity = l1_lambda(cfg, step) * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    return LossTerms(mse + aux + sparsity, mse, aux, sparsity, x_s, x_hat_s, f)


def auxk_loss(sae: SparseAutoencoder, pre: Tensor, residual: Tensor, dead: Tensor, aux_k: int) -> Tensor:
    """Normalised error of reconstructing ``residual`` from the top-aux_k dead latents (0 if none is dead).

    The normaliser Σ‖e − ē‖² is the global batch's under DDP and the value is multiplied by the world size, so the
    gradient DDP averages over ranks is the one-process gradient on the global batch."""
    vals, idx = pre.masked_fill(~dead, float("-inf")).topk(min(aux_k, pre.shape[-1]), dim=-1, sorted=False)
    e_hat = torch.zeros_like(pre).scatter(-1, idx, vals.relu()) @ sae.W_dec
    sums = torch.cat([residual.sum(0, dtype=torch.float64), residual.pow(2).sum(dtype=torch.float64).view(1),
                      residual.new_full((1,), residual.shape[0], dtype=torch.float64)])
    sums = sum_over_ranks(sums)
    var = (sums[-2] - sums[:-2].pow(2).sum() / sums[-1]).clamp_min(1e-12).to(residual.dtype)
    return world_size() * (e_hat - residual).pow(2).sum() / var * dead.any()


@torch.no_grad()
def batch_explained_variance(x_s: Tensor, x_hat_s: Tensor) -> Tensor:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean_batch(x)‖² on one batch (a cheap training-time estimate)."""
    return 1 - (x_s - x_hat_s).pow(2).sum() / (x_s - x_s.mean(0)).pow(2).sum().clamp_min(1e-12)
