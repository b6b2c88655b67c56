"""The closed-form refusal-direction estimators against hand computations on planted Gaussian data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from refusal.errors import ConfigError
from refusal.evaluation.estimators import estimate, estimate_grid, ledoit_wolf, shrunk_covariance


def _planted(n: int = 4000, big: float = 30.0, seed: int = 0):
    """Two Gaussian classes in 6 dims with the same covariance, their means apart by e0 + e1; dim 1 varies ``big``
    times more than the others. The Bayes-optimal discriminant Σ⁻¹Δμ is almost exactly e0; Δμ is not."""
    rng = np.random.default_rng(seed)
    scale = np.ones(6)
    scale[1] = big
    shift = np.zeros(6)
    shift[:2] = 1.0
    toxic = rng.normal(size=(n, 6)) * scale + shift
    safe = rng.normal(size=(n, 6)) * scale
    return torch.tensor(toxic), torch.tensor(safe)


def _cos(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(a @ b / (a.norm() * b.norm()))


def _along(u: np.ndarray, diff: np.ndarray) -> np.ndarray:
    u = u / np.linalg.norm(u)
    return u * (u @ diff)


def test_whitened_dim_and_lda_recover_the_planted_direction_that_dim_misses():
    toxic, safe = _planted()
    e0 = torch.eye(6, dtype=torch.float64)[0]
    assert abs(_cos(estimate("dim", toxic, safe), e0)) < 0.8  # pulled towards the high-variance dim
    for method in ("whitened_dim", "lda"):
        assert _cos(estimate(method, toxic, safe, shrinkage=0.0), e0) > 0.99, method
        assert _cos(estimate(method, toxic, safe, shrinkage="auto"), e0) > 0.99, method


def test_each_estimator_equals_its_hand_computation():
    toxic, safe = _planted(n=300, big=5.0, seed=1)
    t, s = toxic.numpy(), safe.numpy()
    diff = t.mean(0) - s.mean(0)
    np.testing.assert_allclose(estimate("dim", toxic, safe).numpy(), diff)
    pooled = np.concatenate([t, s])
    top = np.linalg.eigh(np.cov(pooled.T))[1][:, -1]
    np.testing.assert_allclose(estimate("pca", toxic, safe).numpy(), _along(top, diff), atol=1e-10)
    cov_s = np.cov(s.T, bias=True)
    np.testing.assert_allclose(estimate("whitened_dim", toxic, safe, shrinkage=0.0).numpy(),
                               _along(np.linalg.solve(cov_s, diff), diff), atol=1e-10)
    within = np.concatenate([t - t.mean(0), s - s.mean(0)])
    cov_w = within.T @ within / len(within)
    np.testing.assert_allclose(estimate("lda", toxic, safe, shrinkage=0.0).numpy(),
                               _along(np.linalg.solve(cov_w, diff), diff), atol=1e-10)
    lam = 0.3
    shrunk = (1 - lam) * cov_w + lam * np.trace(cov_w) / 6 * np.eye(6)
    np.testing.assert_allclose(estimate("lda", toxic, safe, shrinkage=lam).numpy(),
                               _along(np.linalg.solve(shrunk, diff), diff), atol=1e-10)


def test_the_probe_is_the_minimiser_of_its_objective():
    toxic, safe = _planted(n=200, big=5.0, seed=2)
    x = np.concatenate([toxic.numpy(), safe.numpy()])
    y = np.concatenate([np.ones(len(toxic)), np.zeros(len(safe))])
    x = x / np.sqrt((x ** 2).mean())
    l2 = 1e-2

    def objective(p):
        z = x @ p[:-1] + p[-1]
        return np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * p[:-1] @ p[:-1]

    ref = minimize(objective, np.zeros(7), method="BFGS", options={"gtol": 1e-10}).x
    got = estimate("probe", toxic, safe, probe_l2=l2)
    assert _cos(got, ref[:-1]) > 0.99999
    assert _cos(got, torch.eye(6, dtype=torch.float64)[0]) > 0.9  # and it finds the planted direction too


def test_every_direction_has_the_mean_difference_projection_as_length():
    toxic, safe = _planted(n=300, big=5.0, seed=3)
    diff = toxic.mean(0) - safe.mean(0)
    for method in ("dim", "pca", "whitened_dim", "lda", "probe"):
        r = estimate(method, toxic, safe)
        unit = r / r.norm()
        assert float(r @ diff) > 0, method  # points towards toxic
        torch.testing.assert_close(r, unit * (unit @ diff))


def test_ledoit_wolf_by_hand():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 8)) * np.linspace(1, 4, 8)
    xc = x - x.mean(0)
    n, d = xc.shape
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    delta = ((s - mu * np.eye(d)) ** 2).sum()
    beta = sum(((np.outer(r, r) - s) ** 2).sum() for r in xc) / n ** 2
    assert ledoit_wolf(torch.tensor(xc)) == pytest.approx(min(beta, delta) / delta, rel=1e-10)
    lam = min(beta, delta) / delta
    np.testing.assert_allclose(shrunk_covariance(torch.tensor(xc), "auto").numpy(),
                               (1 - lam) * s + lam * mu * np.eye(d), atol=1e-12)


def test_the_grid_is_the_estimator_at_every_layer_and_position():
    toxic, safe = _planted(n=60, big=5.0, seed=5)
    tox = torch.stack([toxic, 2 * toxic, toxic + 1], 1).reshape(60, 3, 1, 6).expand(60, 3, 2, 6)
    saf = torch.stack([safe, 2 * safe, safe + 1], 1).reshape(60, 3, 1, 6).expand(60, 3, 2, 6)
    for method in ("dim", "lda"):
        grid = estimate_grid(method, tox, saf)
        assert grid.shape == (3, 2, 6)
        for li in range(3):
            torch.testing.assert_close(grid[li, 1], estimate(method, tox[:, li, 1], saf[:, li, 1]))


def test_a_model_based_method_is_not_closed_form():
    with pytest.raises(ConfigError, match="'caa' is not a closed-form one"):
        estimate("caa", torch.zeros(2, 3), torch.zeros(2, 3))
