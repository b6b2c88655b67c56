"""The per-prompt refusal scores of one analysed layer, checked: the input of refusal.verdict.evidence.

Toxic arrays have one value per held-out toxic prompt (same prompt order in each), safe arrays one value per
held-out safe prompt (same order in each). Every check raises ConfigError with a one-line message naming the bad
input and what is valid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refusal.errors import ConfigError

WHERE = "verdict evidence"


@dataclass(frozen=True)
class LayerScores:
    """Refusal scores at one layer (float64 arrays; shapes in brackets, n toxic prompts, m safe prompts)."""
    base: np.ndarray  # [n] baseline refusal score
    labels: np.ndarray  # [n] category index of each toxic prompt, 0 .. C-1
    categories: tuple[str, ...]  # [C] names
    safe_base: np.ndarray  # [m] baseline refusal score of the safe prompts (their mean is the safe floor)
    shared: np.ndarray  # [n] score with the shared set ablated
    safe_kl: np.ndarray  # [m] KL(base || shared ablated) at the first response position
    random: np.ndarray | None  # [n] score with a random set of the shared set's size ablated, mean over sets
    n_random: int  # random sets averaged in ``random`` (0: none measured)
    per_category: np.ndarray | None  # [C, n] score with category A's set ablated (row A)
    induced: np.ndarray | None  # [m] score of the safe prompts with the shared set patched in

    def groups(self) -> list[np.ndarray]:
        """Index arrays: one per category (into the toxic arrays), then one for the safe prompts."""
        return [np.flatnonzero(self.labels == c) for c in range(len(self.categories))] + [
            np.arange(len(self.safe_base))]


def _vector(name: str, value, length: int | None = None) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.ndim != 1:
        raise ConfigError(f"{WHERE}: {name} has shape {a.shape}; use one value per prompt (a 1-d array)")
    if length is not None and len(a) != length:
        raise ConfigError(f"{WHERE}: {name} has {len(a)} values; it must have {length}, one per prompt")
    if not np.isfinite(a).all():
        raise ConfigError(f"{WHERE}: {name} has {int((~np.isfinite(a)).sum())} non-finite values; scores must be "
                          f"finite")
    return a


def _labels(labels, n: int, categories) -> tuple[np.ndarray, tuple[str, ...]]:
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) != n or (lab.size and not np.issubdtype(lab.dtype, np.integer)):
        raise ConfigError(f"{WHERE}: labels must be {n} integer category indices (one per toxic prompt); got "
                          f"shape {lab.shape}, dtype {lab.dtype}")
    if categories is None:
        categories = [str(c) for c in range(int(lab.max()) + 1 if lab.size else 0)]
    categories = tuple(str(c) for c in categories)
    if lab.size and (lab.min() < 0 or lab.max() >= len(categories)):
        raise ConfigError(f"{WHERE}: labels range over [{lab.min()}, {lab.max()}]; valid are 0 .. "
                          f"{len(categories) - 1} for categories {list(categories)}")
    return lab.astype(np.int64), categories


def _random(value, n: int) -> tuple[np.ndarray | None, int]:
    if value is None:
        return None, 0
    a = np.asarray(value, dtype=np.float64)
    a = a[None, :] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] != n or a.shape[0] == 0 or not np.isfinite(a).all():
        raise ConfigError(f"{WHERE}: random has shape {np.shape(value)}; use finite scores [n_random, {n}] or [{n}]")
    return a.mean(0), a.shape[0]


def _per_category(value, n: int, C: int) -> np.ndarray | None:
    if value is None:
        return None
    a = np.asarray(value, dtype=np.float64)
    if a.shape != (C, n) or not np.isfinite(a).all():
        raise ConfigError(f"{WHERE}: per_category has shape {a.shape}; use finite scores [{C} categories, {n} toxic "
                          f"prompts], row A = category A's set ablated")
    return a


def layer_scores(base, labels, safe_base, shared, safe_kl, *, per_category=None, random=None, induced=None,
                 categories=None) -> LayerScores:
    """Check and bundle one layer's scores (see :class:`LayerScores`); each category and the safe prompts need
    >= 2 prompts (a bootstrap of one prompt has no spread)."""
    base = _vector("base", base)
    n = len(base)
    lab, cats = _labels(labels, n, categories)
    safe = _vector("safe_base", safe_base)
    counts = np.bincount(lab, minlength=len(cats))
    if len(cats) == 0 or (counts < 2).any() or len(safe) < 2:
        few = {c: int(k) for c, k in zip(cats, counts) if k < 2}
        raise ConfigError(f"{WHERE}: every category and the safe prompts need >= 2 prompts; got {len(safe)} safe "
                          f"prompts and categories with fewer: {few if cats else 'no categories'}")
    rand, n_random = _random(random, n)
    return LayerScores(base, lab, cats, safe, _vector("shared", shared, n), _vector("safe_kl", safe_kl, len(safe)),
                       rand, n_random, _per_category(per_category, n, len(cats)),
                       None if induced is None else _vector("induced", induced, len(safe)))
