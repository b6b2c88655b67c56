"""Synthetic per-prompt refusal scores with a planted answer, for the verdict tests (import from here)."""
from __future__ import annotations

import numpy as np

from refusal.verdict import layer_evidence

FLOOR = -4.0  # true mean refusal score of the safe prompts
CATEGORIES = ("cyber", "fraud", "hate", "violence")


def uniform(value: float, C: int = 4) -> np.ndarray:
    return np.full((C, C), value)


def block(own: float, other: float, C: int = 4) -> np.ndarray:
    return np.where(np.eye(C, dtype=bool), own, other)


def synth(residual, drop, *, n: int = 12, m: int = 12, noise: float = 0.3, spread: float = 1.0,
          random_residual: float = 0.95, n_random: int = 2, kl: float = 0.02, induced: float | None = 0.8,
          headroom=8.0, seed: int = 0) -> dict:
    """The keyword arguments of layer_evidence for C = len(drop) categories with n toxic prompts each.

    Each toxic prompt i of category c has baseline score FLOOR + headroom_c + N(0, spread); an ablation that leaves a
    fraction f of its refusal gives FLOOR + f·(baseline − FLOOR) + N(0, noise): f = residual[c] for the shared set,
    1 − drop[A, c] for category A's set, random_residual for the random sets. Safe prompts: FLOOR + N(0, spread),
    KL ≈ kl, induced score = safe + induced·mean headroom."""
    drop = np.asarray(drop, dtype=float)
    C = len(drop)
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), n)
    residual = np.broadcast_to(np.asarray(residual, dtype=float), (C,))
    heads = np.broadcast_to(np.asarray(headroom, dtype=float), (C,))
    base = FLOOR + heads[labels] + rng.normal(0, spread, C * n)
    above = base - FLOOR

    def ablated(fraction, size=None):
        return FLOOR + fraction * above + rng.normal(0, noise, size or C * n)

    safe = FLOOR + rng.normal(0, spread, m)
    return {"base": base, "labels": labels, "safe_base": safe, "shared": ablated(residual[labels]),
            "safe_kl": np.abs(kl + rng.normal(0, kl / 4, m)),
            "per_category": np.stack([ablated(1 - drop[a, labels]) for a in range(C)]),
            "random": ablated(random_residual, (n_random, C * n)) if n_random else None,
            "induced": None if induced is None else safe + induced * heads.mean() + rng.normal(0, noise, m),
            "categories": list(CATEGORIES[:C]) if C <= len(CATEGORIES) else None}


def evidence(residual, drop, n_resamples: int = 1000, **kw) -> dict:
    return layer_evidence(**synth(residual, drop, **kw), n_resamples=n_resamples, seed=1)


def monolithic(**kw) -> dict:
    """One shared factor: the shared set brings every category to the safe floor; each category's set hurts all
    alike (no dissociation: every category's own set holds the shared factor)."""
    return evidence(0.02, uniform(0.6), **kw)


def modular(**kw) -> dict:
    """Block-diagonal: the shared set removes little; each category's set removes its own category's refusal."""
    return evidence(0.85, block(0.9, 0.05), **kw)


def union(**kw) -> dict:
    """Separate small mechanisms, 3 categories: the pooled set is their union and removes every category's refusal,
    yet each category's own set removes only its own (block-diagonal drop matrix)."""
    return evidence(0.02, block(1.0, 0.0, 3), **kw)


def mixed(**kw) -> dict:
    """A shared part carrying ~65 % of each category's refusal, which every category's own set holds (cross drops
    ~0.6), plus category-specific parts (own drops ~1)."""
    return evidence(0.35, block(1.0, 0.6), **kw)
