import json

import pytest

from refusal.data import PromptRecord, PromptSet, analyze_splits, build_prompt_set
from refusal.errors import ConfigError


def test_counts_totals_and_warnings(make_table, make_cfg):
    cfg = make_cfg(make_table({"cbrn": 35, "violence": 50}, n_safe=10, n_hard={"privacy": 5}),
                   min_toxic_per_category=10)
    ps = build_prompt_set(cfg)
    out = analyze_splits(ps, cfg)
    json.dumps(out)  # JSON-able
    rows = {(r["category"], r["label"], r["split"]): r["n"] for r in out["counts"]}
    assert rows[("cbrn", "toxic", "train")] == 21 and rows[("cbrn", "toxic", "val")] == 7
    assert rows[("violence", "toxic", "val")] == 10
    assert sum(rows.values()) == len(ps) == out["totals"]["prompts"]
    assert out["totals"]["by_label"] == {"toxic": 85, "safe": 10, "hard": 5}
    assert out["warnings"] == ["category 'cbrn' has 7 toxic prompts in split 'val' (< 10)",
                               "category 'cbrn' has 7 toxic prompts in split 'test' (< 10)"]
    cfg.min_toxic_per_category = 0
    assert analyze_splits(ps, cfg)["warnings"] == []


def test_zero_counts_reported_for_requested_categories(make_cfg, make_table):
    cfg = make_cfg(make_table({}), categories=["cbrn", "sexual"], min_toxic_per_category=2)
    ps = PromptSet([PromptRecord(f"x:{i}", f"p{i}", "cbrn", "toxic", "x", s)
                    for i, s in enumerate(["train", "train", "val", "test", "test"])])
    out = analyze_splits(ps, cfg)
    assert "category 'cbrn' has 1 toxic prompts in split 'val' (< 2)" in out["warnings"]
    assert "category 'sexual' has 0 toxic prompts in split 'train' (< 2)" in out["warnings"]
    assert len(out["warnings"]) == 4
    cfg.min_toxic_per_category = -1
    with pytest.raises(ConfigError, match="min_toxic_per_category=-1"):
        analyze_splits(ps, cfg)
