"""Refusal-direction estimators on activation samples at one layer and position (toxic [n, d] vs safe [m, d]).

Each returns a model-space vector r [d] (float64) whose unit direction r̂ is the estimator's, signed towards toxic,
and whose length is the class-mean difference's projection on it, r = (r̂·Δμ) r̂ with Δμ = mean(toxic) − mean(safe):
directional ablation uses r̂, and actadd adds the same toxic−safe separation along r̂ whichever estimator found it
(for ``dim``, r = Δμ exactly).

dim           Δμ (Arditi et al. 2024)
pca           the first principal component of the pooled toxic and safe activations, centred on their joint mean
              (a representation-reading vector)
whitened_dim  the difference of means in the space whitened by the safe activations' covariance Σ_s (shrunk),
              W Δμ with W = Σ_s^(-1/2), mapped back to model space as the direction that reads it: Wᵀ W Δμ = Σ_s⁻¹ Δμ
lda           Fisher's linear discriminant Σ_w⁻¹ Δμ, Σ_w the pooled within-class covariance (shrunk): the direction of
              the Mahalanobis (shared-covariance Gaussian) discriminant
probe         the weights of an L2-regularised logistic-regression probe, toxic (1) vs safe (0), fitted by L-BFGS

``shrinkage``: Σ ← (1 − λ) Σ + λ (tr Σ / d) I, with λ a number in [0, 1] or ``auto`` (Ledoit and Wolf 2004).
The estimators that need the model (``caa``: paired responses; ``rdo``: gradient-optimised) live in
refusal/evaluation/direction_methods.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from refusal.errors import ConfigError

CLOSED_FORM = ("dim", "pca", "whitened_dim", "lda", "probe")
MODEL_BASED = ("caa", "rdo")
ESTIMATORS = CLOSED_FORM + MODEL_BASED


def along_mean_difference(direction: Tensor, diff: Tensor) -> Tensor:
    """(r̂·Δμ) r̂ for r̂ = direction / |direction| (whatever its sign, r·Δμ ≥ 0: it points towards toxic); zero for a
    zero direction."""
    norm = direction.norm()
    if float(norm) == 0.0:
        return torch.zeros_like(diff)
    unit = direction / norm
    return unit * (unit @ diff)


def ledoit_wolf(centred: Tensor) -> float:
    """The Ledoit–Wolf shrinkage intensity λ ∈ [0, 1] of the sample covariance of ``centred`` rows [n, d]."""
    n, d = centred.shape
    cov = centred.T @ centred / n
    mu = torch.trace(cov) / d
    delta = (cov - mu * torch.eye(d, dtype=cov.dtype)).pow(2).sum()
    if float(delta) == 0.0:
        return 0.0
    sq = centred.pow(2).sum(1)
    # sum_k ||x_k x_kᵀ − S||_F² = sum_k (|x_k|⁴ − 2 x_kᵀ S x_k) + n ||S||_F²
    spread = (sq.pow(2) - 2 * ((centred @ cov) * centred).sum(1)).sum() + n * cov.pow(2).sum()
    beta = torch.clamp(spread / n ** 2, max=delta)
    return float(beta / delta)


def shrunk_covariance(centred: Tensor, shrinkage) -> Tensor:
    """(1 − λ) S + λ (tr S / d) I of the sample covariance S of ``centred`` rows; λ a number or ``auto``."""
    n, d = centred.shape
    cov = centred.T @ centred / max(n, 1)
    lam = ledoit_wolf(centred) if shrinkage == "auto" else float(shrinkage)
    return (1 - lam) * cov + lam * torch.trace(cov) / d * torch.eye(d, dtype=cov.dtype)


def fit_probe(x: Tensor, y: Tensor, l2: float) -> Tensor:
    """Weights w [d] and bias b (returned as [d + 1]) minimising mean logistic loss(x·w + b, y) + l2/2 |w|²,
    by L-BFGS in float64 from zero (deterministic)."""
    x, y = x.double(), y.double()
    params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = x @ params[:-1] + params[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.5 * l2 * params[:-1].pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return params.detach()


def estimate(method: str, toxic: Tensor, safe: Tensor, shrinkage="auto", probe_l2: float = 1e-3) -> Tensor:
    """The ``method`` direction (module doc) from toxic [n, d] and safe [m, d] activations; float64 [d]."""
    if method not in CLOSED_FORM:
        raise ConfigError(f"estimator {method!r} is not a closed-form one; choose one of {list(CLOSED_FORM)}")
    toxic, safe = toxic.double(), safe.double()
    diff = toxic.mean(0) - safe.mean(0)
    if method == "dim":
        return diff
    if method == "pca":
        pooled = torch.cat([toxic, safe])
        _, _, vh = torch.linalg.svd(pooled - pooled.mean(0), full_matrices=False)
        return along_mean_difference(vh[0], diff)
    if method == "whitened_dim":
        cov = shrunk_covariance(safe - safe.mean(0), shrinkage)
        return along_mean_difference(torch.linalg.pinv(cov, hermitian=True) @ diff, diff)
    if method == "lda":
        within = torch.cat([toxic - toxic.mean(0), safe - safe.mean(0)])
        cov = shrunk_covariance(within, shrinkage)
        return along_mean_difference(torch.linalg.pinv(cov, hermitian=True) @ diff, diff)
    x = torch.cat([toxic, safe])
    scale = x.pow(2).mean().sqrt().clamp_min(1e-12)  # one global scale: the L2 term means the same at any layer
    y = torch.cat([torch.ones(len(toxic)), torch.zeros(len(safe))])
    w = fit_probe(x / scale, y, probe_l2)[:-1]
    return along_mean_difference(w, diff)


def estimate_grid(method: str, toxic: Tensor, safe: Tensor, shrinkage="auto", probe_l2: float = 1e-3) -> Tensor:
    """``estimate`` at every (layer, position) of toxic [n, L, P, d] and safe [m, L, P, d]: [L, P, d] float64."""
    if method == "dim":
        return toxic.double().mean(0) - safe.double().mean(0)
    _, L, P, d = toxic.shape
    out = torch.zeros(L, P, d, dtype=torch.float64)
    for li in range(L):
        for p in range(P):
            out[li, p] = estimate(method, toxic[:, li, p], safe[:, li, p], shrinkage, probe_l2)
    return out
