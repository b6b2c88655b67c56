"""Seeded, input-order-independent selection (balance, per-category cap) and stratified train/val/test split."""
from __future__ import annotations

import dataclasses
import math
import random
from collections import defaultdict
from typing import Iterable, Mapping

from refusal.data.records import LABELS, SPLITS, PromptRecord
from refusal.errors import ConfigError, check_choice
from refusal.utils.io import stable_hash

BALANCE_MODES = ("use_all", "equalize")


def _rng(seed: int, *parts) -> random.Random:
    return random.Random(stable_hash([seed, *parts]))


def _strata(records: Iterable[PromptRecord]) -> dict[tuple[str, str], list[PromptRecord]]:
    """(category, label) -> records sorted by id, strata in sorted order."""
    groups: dict[tuple[str, str], list[PromptRecord]] = defaultdict(list)
    for r in records:
        groups[(r.category, r.label)].append(r)
    return {k: sorted(groups[k], key=lambda r: r.id) for k in sorted(groups)}


def _caps(max_per_category) -> dict[str, int | None]:
    """Cap per label from ``data.max_per_category``: an int or null for every label, or a mapping label -> int or
    null (a label it leaves out is not capped)."""
    def check(name, value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}={value!r} is not valid; use a positive int or null")
        return value

    if isinstance(max_per_category, Mapping):
        for label in max_per_category:
            check_choice("data.max_per_category key", label, LABELS)
        return {label: check(f"data.max_per_category.{label}", max_per_category.get(label)) for label in LABELS}
    check("data.max_per_category", max_per_category)
    return {label: max_per_category for label in LABELS}


def select(records: Iterable[PromptRecord], balance: str, max_per_category, seed: int) -> list[PromptRecord]:
    """Downsample each category x label stratum to its target size with a seeded shuffle.

    Target: the stratum size; with ``balance='equalize'`` every toxic stratum is cut to the smallest toxic
    stratum's size; ``max_per_category`` (an int, null = no cap, or a mapping label -> int or null) caps every
    stratum of that label. A stratum keeps a prefix of its seeded shuffle, so a larger target only adds prompts.
    """
    check_choice("data.balance", balance, BALANCE_MODES)
    caps = _caps(max_per_category)
    strata = _strata(records)
    toxic_sizes = [len(v) for (_, label), v in strata.items() if label == "toxic"]
    out = []
    for (category, label), group in strata.items():
        target = len(group)
        if balance == "equalize" and label == "toxic":
            target = min(toxic_sizes)
        if caps[label] is not None:
            target = min(target, caps[label])
        if target < len(group):
            group = list(group)
            _rng(seed, "select", category, label).shuffle(group)
            group = group[:target]
        out.extend(group)
    return out


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    fractions = dict(fractions)
    if sorted(fractions) != sorted(SPLITS):
        raise ConfigError(f"data.split_fractions keys {sorted(fractions)} are not valid; use exactly {list(SPLITS)}")
    for name, f in fractions.items():
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise ConfigError(f"data.split_fractions.{name}={f!r} is not valid; use a number in (0, 1)")
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise ConfigError(f"data.split_fractions {fractions} sum to {sum(fractions.values()):g}; they must sum to 1")
    return {s: float(fractions[s]) for s in SPLITS}


def split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of n * fraction (ties in train, val, test order); a stratum of >= 3 items
    gets at least one item in every split, taken from the largest split."""
    exact = {s: n * fractions[s] for s in SPLITS}
    sizes = {s: math.floor(exact[s]) for s in SPLITS}
    by_remainder = sorted(SPLITS, key=lambda s: (-(exact[s] - sizes[s]), SPLITS.index(s)))
    for s in by_remainder[: n - sum(sizes.values())]:
        sizes[s] += 1
    if n >= len(SPLITS):
        for s in SPLITS:
            if sizes[s] == 0:
                donor = max(SPLITS, key=lambda d: (sizes[d], -SPLITS.index(d)))
                sizes[donor] -= 1
                sizes[s] = 1
    return sizes


def assign_splits(records: Iterable[PromptRecord], fractions: Mapping[str, float], seed: int
                  ) -> list[PromptRecord]:
    """Split every category x label stratum separately after a seeded shuffle of its id-sorted records."""
    fractions = check_fractions(fractions)
    out = []
    for (category, label), group in _strata(records).items():
        group = list(group)
        _rng(seed, "split", category, label).shuffle(group)
        sizes = split_sizes(len(group), fractions)
        start = 0
        for s in SPLITS:
            out.extend(dataclasses.replace(r, split=s) for r in group[start:start + sizes[s]])
            start += sizes[s]
    return out


def check_splits(records: list[PromptRecord]) -> None:
    """Every split needs toxic prompts, and every label present in the set."""
    present = {r.label for r in records}
    if "toxic" not in present:
        raise ConfigError("no toxic prompts are left after filtering (check data.sources, data.taxonomy, "
                          "data.categories)")
    counts = defaultdict(int)
    for r in records:
        counts[(r.split, r.label)] += 1
    for s in SPLITS:
        for label in (lb for lb in LABELS if lb in present):
            if counts[(s, label)] == 0:
                raise ConfigError(f"split {s!r} has no {label} prompts after filtering; raise "
                                  f"data.max_per_category, widen data.categories or change data.split_fractions")
