"""Balance, per-category cap and the stratified seeded split, on records built in code."""
import collections
import random

import pytest

from refusal.data import PromptRecord
from refusal.data.split import assign_splits, select, split_sizes
from refusal.errors import ConfigError

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def records(sizes):
    """sizes: {(category, label): n}"""
    return [PromptRecord(f"s:{c}:{lb}:{i:03d}", f"{c} {lb} {i}", c, lb, "s")
            for (c, lb), n in sizes.items() for i in range(n)]


SIZES = {("cbrn", "toxic"): 7, ("violence", "toxic"): 20, ("illegal", "toxic"): 3, ("benign", "safe"): 11,
         ("violence", "hard"): 2, ("cbrn", "hard"): 1}


def counts(recs, *fields):
    return collections.Counter(tuple(getattr(r, f) for f in fields) for r in recs)


def test_split_sizes_rounding():
    assert split_sizes(10, FRACTIONS) == {"train": 6, "val": 2, "test": 2}
    assert split_sizes(14, FRACTIONS) == {"train": 8, "val": 3, "test": 3}
    assert split_sizes(3, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 1, "val": 1, "test": 1}
    assert split_sizes(4, {"train": 0.9, "val": 0.05, "test": 0.05}) == {"train": 2, "val": 1, "test": 1}
    for n in range(0, 40):
        sizes = split_sizes(n, FRACTIONS)
        assert sum(sizes.values()) == n
        if n >= 3:
            assert min(sizes.values()) >= 1


def test_split_is_stratified_and_covers_every_big_stratum():
    out = assign_splits(records(SIZES), FRACTIONS, seed=0)
    by = counts(out, "category", "label", "split")
    for (c, lb), n in SIZES.items():
        per_split = [by[(c, lb, s)] for s in ("train", "val", "test")]
        assert sum(per_split) == n
        assert per_split == list(split_sizes(n, FRACTIONS).values())
        if n >= 3:
            assert min(per_split) >= 1


def test_split_deterministic_and_independent_of_input_order():
    recs = records(SIZES)
    a = {r.id: r.split for r in assign_splits(recs, FRACTIONS, seed=3)}
    shuffled = list(recs)
    random.Random(0).shuffle(shuffled)
    b = {r.id: r.split for r in assign_splits(shuffled, FRACTIONS, seed=3)}
    assert a == b
    c = {r.id: r.split for r in assign_splits(recs, FRACTIONS, seed=4)}
    assert a != c


def test_bad_fractions():
    with pytest.raises(ConfigError, match="sum to 1.1"):
        assign_splits([], {"train": 0.7, "val": 0.2, "test": 0.2}, seed=0)
    with pytest.raises(ConfigError, match="'dev'"):
        assign_splits([], {"train": 0.6, "dev": 0.2, "test": 0.2}, seed=0)
    with pytest.raises(ConfigError, match="val=0"):
        assign_splits([], {"train": 0.8, "val": 0, "test": 0.2}, seed=0)


def test_use_all_and_cap():
    recs = records(SIZES)
    assert counts(select(recs, "use_all", None, seed=0), "category", "label") == SIZES
    capped = counts(select(recs, "use_all", 5, seed=0), "category", "label")
    assert capped == {k: min(n, 5) for k, n in SIZES.items()}
    # seeded, and a larger cap only adds prompts
    small = {r.id for r in select(recs, "use_all", 5, seed=0)}
    assert small == {r.id for r in select(list(reversed(recs)), "use_all", 5, seed=0)}
    assert small <= {r.id for r in select(recs, "use_all", 8, seed=0)}
    assert small != {r.id for r in select(recs, "use_all", 5, seed=1)}


def test_equalize_downsamples_toxic_only():
    out = counts(select(records(SIZES), "equalize", None, seed=0), "category", "label")
    assert {k: n for k, n in out.items() if k[1] == "toxic"} == {("cbrn", "toxic"): 3, ("violence", "toxic"): 3,
                                                                   ("illegal", "toxic"): 3}
    assert out[("benign", "safe")] == 11 and out[("violence", "hard")] == 2


def test_bad_balance_and_cap_values():
    with pytest.raises(ConfigError) as e:
        select(records(SIZES), "balanced", None, seed=0)
    assert "'balanced'" in str(e.value) and "equalize" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="max_per_category=0"):
        select(records(SIZES), "use_all", 0, seed=0)
    with pytest.raises(ConfigError, match="'unsafe'.*toxic"):
        select(records(SIZES), "use_all", {"unsafe": 3}, seed=0)
    with pytest.raises(ConfigError, match="max_per_category.safe=-1"):
        select(records(SIZES), "use_all", {"safe": -1}, seed=0)


def test_cap_per_label_leaves_unnamed_labels_uncapped():
    out = collections.Counter((r.category, r.label) for r in select(records(SIZES), "use_all", {"toxic": 2}, seed=0))
    full = collections.Counter((r.category, r.label) for r in records(SIZES))
    assert all(n == min(full[k], 2) for k, n in out.items() if k[1] == "toxic")
    assert all(out[k] == n for k, n in full.items() if k[1] != "toxic")
    assert any(n > 2 for k, n in full.items() if k[1] == "toxic")
