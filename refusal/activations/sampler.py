"""Category-weighted balanced sampling of activation rows.

Row weights: with ``balance_safe_toxic`` toxic rows get half the probability mass and non-toxic rows (safe and
hard) the other half; otherwise each class keeps its natural share. Within a class, ``use_category_weights``
gives every category an equal share (inverse-frequency weights), else rows are uniform. Draws are with
replacement from a seeded generator; under DDP every rank makes the same draws (the datamodule gives each rank
its slice of every global batch).
"""
from __future__ import annotations

import numpy as np
import torch


def row_weights(is_toxic: np.ndarray, category: np.ndarray, balance_safe_toxic: bool, use_category_weights: bool) -> np.ndarray:
    """Probability of each row (sums to 1). ``category`` holds integer codes."""
    n = len(is_toxic)
    w = np.zeros(n, dtype=np.float64)
    classes = [c for c in (True, False) if (is_toxic == c).any()]
    for c in classes:
        in_class = is_toxic == c
        mass = 1.0 / len(classes) if balance_safe_toxic else in_class.sum() / n
        if use_category_weights:
            cats = np.unique(category[in_class])
            for cat in cats:
                sel = in_class & (category == cat)
                w[sel] = mass / len(cats) / sel.sum()
        else:
            w[in_class] = mass / in_class.sum()
    return w / w.sum()


def draw_rows(weights: np.ndarray, n_draws: int, seed: int, epoch: int) -> np.ndarray:
    """Seeded draws (with replacement) of row indices for one epoch."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.multinomial(torch.as_tensor(weights), n_draws, replacement=True, generator=gen).numpy()
