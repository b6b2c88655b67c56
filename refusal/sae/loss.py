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
from refusal.sae.sparse import Pattern, active_values, decode


@dataclass
class LossTerms:
    """Scalar terms; x_s, x_hat_s [B, d_in] in scaled units; l0 [B] the number of active latents of each row;
    counts [d_sae] the number of rows each latent is active in."""
    loss: Tensor
    mse: Tensor
    aux: Tensor
    sparsity: Tensor
    x_s: Tensor
    x_hat_s: Tensor
    l0: Tensor
    counts: Tensor


def l1_lambda(cfg: SAEConfig, step: int) -> float:
    if cfg.sparsity_warmup_steps == 0:
        return cfg.l1_coeff
    return cfg.l1_coeff * min(1.0, step / cfg.sparsity_warmup_steps)


def sae_loss(sae: SparseAutoencoder, x: Tensor, cfg: SAEConfig, step: int) -> LossTerms:
    """The loss terms of one batch, by the dense path or (``cfg.kernel == "sparse"`` and a top-set rule) the sparse
    kernels of ``refusal.sae.sparse``; both give the same values and gradients up to float summation order."""
    x_s = x.to(sae.W_enc.dtype) * sae.input_scale
    sparse = cfg.kernel == "sparse" and sae.selects_top()
    if sparse:
        b_dec = sae.b_dec if sae.apply_b_dec_to_input else None
        with torch.no_grad():
            x_c = x_s - b_dec if b_dec is not None else x_s
            pre = torch.addmm(sae.b_enc, x_c, sae.W_enc)
        pattern = sae.active_pattern(pre)
        vals = active_values(pre, x_c, sae.W_enc, sae.b_enc, b_dec, pattern).relu()
        x_hat_s = decode(vals, sae.W_dec, pattern) + sae.b_dec
        on = vals.detach() > 0
        l0 = torch.bincount(pattern.rows[on], minlength=x_s.shape[0])
        counts = torch.bincount(pattern.cols[on], minlength=sae.d_sae)
        f, active = vals.detach(), on  # the batchtopk threshold's smallest kept value comes from these
    else:
        pre = sae.pre_acts(x_s)
        f = sae.activate(pre)
        x_hat_s = sae.decode_scaled(f)
        active = f.detach() > 0
        l0, counts = active.sum(-1), active.sum(0)
    mse = (x_hat_s - x_s).pow(2).mean()
    zero = mse.new_zeros(())
    aux = sparsity = zero
    if sae.training:
        sae.record_firing(counts > 0, x_s.shape[0])
        if sae.architecture == "batchtopk":
            sae.update_threshold(torch.where(active, f.detach(), torch.inf).min())
    if sae.training and cfg.architecture in ("topk", "batchtopk") and cfg.aux_coeff > 0:
        dead = sae.dead_mask(cfg.dead_tokens_threshold)
        # on CPU the check costs nothing: skip the aux pass (its value is 0) while no latent is dead
        if dead.device.type != "cpu" or bool(dead.any()):
            residual = (x_s - x_hat_s).detach()
            if sparse:
                e_hat = sparse_dead_reconstruction(sae, pre, x_c, b_dec, dead, cfg.aux_k)
            else:
                e_hat = dead_reconstruction(sae, pre, dead, cfg.aux_k)
            aux = cfg.aux_coeff * auxk_loss(e_hat, residual, dead)
    elif cfg.architecture == "relu_l1":
        sparsity = l1_lambda(cfg, step) * (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
    return LossTerms(mse + aux + sparsity, mse, aux, sparsity, x_s, x_hat_s, l0.float(), counts)


def dead_top(pre: Tensor, dead: Tensor, aux_k: int) -> Tensor:
    """[B, min(aux_k, d_sae)] indices of each row's largest pre-activations among dead latents (any latent fills
    the rest of a row when fewer are dead; the callers give those entries the value 0)."""
    return pre.detach().masked_fill(~dead, float("-inf")).topk(min(aux_k, pre.shape[-1]), dim=-1, sorted=False).indices


def dead_reconstruction(sae: SparseAutoencoder, pre: Tensor, dead: Tensor, aux_k: int) -> Tensor:
    """ê: the residual's reconstruction (no b_dec) from the top-aux_k ReLU'd pre-activations among dead latents."""
    idx = dead_top(pre, dead, aux_k)
    vals = (pre.gather(-1, idx) * dead[idx]).relu()
    return torch.zeros_like(pre).scatter(-1, idx, vals) @ sae.W_dec


def sparse_dead_reconstruction(sae: SparseAutoencoder, pre: Tensor, x_c: Tensor, b_dec: Tensor | None,
                               dead: Tensor, aux_k: int) -> Tensor:
    """``dead_reconstruction`` by the sparse kernels (``pre`` computed without a graph)."""
    idx = dead_top(pre, dead, aux_k)
    pattern = Pattern.from_rows(idx, sae.d_sae, keep=dead[idx.reshape(-1)])
    return decode(active_values(pre, x_c, sae.W_enc, sae.b_enc, b_dec, pattern).relu(), sae.W_dec, pattern)


def auxk_loss(e_hat: Tensor, residual: Tensor, dead: Tensor) -> Tensor:
    """Normalised error ‖e − ê‖² / ‖e − ē‖² of the dead latents' reconstruction ê of the residual e (0 if none is
    dead).

    The normaliser Σ‖e − ē‖² is the global batch's under DDP and the value is multiplied by the world size, so the
    gradient DDP averages over ranks is the one-process gradient on the global batch."""
    sums = torch.cat([residual.sum(0, dtype=torch.float64), residual.pow(2).sum(dtype=torch.float64).view(1),
                      residual.new_full((1,), residual.shape[0], dtype=torch.float64)])
    sums = sum_over_ranks(sums)
    var = (sums[-2] - sums[:-2].pow(2).sum() / sums[-1]).clamp_min(1e-12).to(residual.dtype)
    return world_size() * (e_hat - residual).pow(2).sum() / var * dead.any()


@torch.no_grad()
def batch_explained_variance(x_s: Tensor, x_hat_s: Tensor) -> Tensor:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean_batch(x)‖² on one batch (a cheap training-time estimate)."""
    return 1 - (x_s - x_hat_s).pow(2).sum() / (x_s - x_s.mean(0)).pow(2).sum().clamp_min(1e-12)
