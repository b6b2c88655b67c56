"""Conditional activation steering on the tiny model: conditions fire strictly above their thresholds, thresholds are
the best balanced accuracy, and only the prompts a condition fires on are steered."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import resolve_refusal_tokens
from refusal.evaluation.cast import CastSettings, best_threshold, fires, representations, run_cast, scores
from refusal.evaluation.context import EvalContext
from refusal.model.chat import ChatFormatter


def test_a_condition_fires_strictly_above_its_threshold():
    assert fires(torch.tensor([0.1, 0.5, 0.5000001, 0.9]), 0.5).tolist() == [False, False, True, True]


def test_the_threshold_is_the_first_best_balanced_accuracy():
    theta, acc = best_threshold(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0.1, 0.2, 0.35]))
    assert theta == pytest.approx(0.25) and acc == pytest.approx((1 + 2 / 3) / 2)
    theta, acc = best_threshold(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2]))
    assert 0.2 < theta < 0.8 and acc == 1.0


def _prompts(texts):
    from refusal.data import PromptSet
    from refusal.data.records import PromptRecord

    cats = ["cyber", "cyber", "fraud", "fraud"]
    return PromptSet([PromptRecord(f"{split}-{label}-{i}-{j}", f"{text} ({split} {j})", cats[i] if label == "toxic" else
                                   "benign", label, "test", split)
                      for split in ("train", "val", "test") for label in ("toxic", "safe")
                      for i, text in enumerate(texts[label]) for j in range(2)])


def test_only_the_prompts_a_condition_fires_on_are_steered(loaded, texts, tmp_path):
    prompts = _prompts(texts)
    ctx = EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts.filter(split="test"),
                      SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer), batch_size=4,
                      max_new_tokens=2, boot=Bootstrap(50, 0.95, "percentile"), seed=0, out_dir=tmp_path)
    r = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 5
    s = CastSettings("selected", "dim", "val", 1.0)
    out = run_cast(ctx, prompts, {"selected": {"layer": 2}}, r, "train", s, tmp_path)
    assert out["condition_layer"] == 2 and set(out["conditions"]) == {"cyber", "fraud"}
    # the firing table by hand, from the representations, the condition vectors and the thresholds
    train = prompts.filter(split="train")
    h = {lb: representations(ctx, [x.prompt for x in train.filter(label=lb)], 2) for lb in ("toxic", "safe")}
    mu = torch.cat([h["toxic"], h["safe"]]).mean(0)
    test = list(prompts.filter(split="test"))
    h_test = representations(ctx, [x.prompt for x in test], 2)
    tox = list(train.filter(label="toxic"))
    for c, cond in out["conditions"].items():
        v = h["toxic"][[i for i, x in enumerate(tox) if x.category == c]].mean(0) - h["safe"].mean(0)
        want = fires(scores(h_test, mu, v), cond["threshold"])
        rows = {(row["label"], row["category"]): row["fire_rate"] for row in out["firing"] if row["condition"] == c}
        assert rows[("safe", "benign")] == pytest.approx(float(want[[x.label == "safe" for x in test]].double().mean()))
        steered_file = tmp_path / "responses" / f"cast_{c}.jsonl"
        ids = {json.loads(line)["id"] for line in steered_file.read_text().splitlines()} if steered_file.exists() else set()
        if len(ids) < len(test):  # a condition firing everywhere reuses the 'always' responses
            assert ids == {x.id for x, f in zip(test, want.tolist()) if f}
    by = {(row["condition"], row["label"], row["category"]) for row in out["rates"]}
    assert {("baseline", "toxic", "all"), ("always", "safe", "all"), ("cast:any", "toxic", "all")} <= by
    assert Path(out["plot"]).read_bytes()[:4] == b"\x89PNG"


def test_a_threshold_split_without_prompts_is_refused(loaded, texts, tmp_path):
    from refusal.errors import ConfigError

    prompts = _prompts(texts)
    ctx = EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts.filter(split="test"),
                      SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer), batch_size=4,
                      max_new_tokens=2, boot=Bootstrap(50, 0.95, "percentile"), seed=0, out_dir=tmp_path)
    no_val = type(prompts)([r for r in prompts if r.split != "val"])
    with pytest.raises(ConfigError, match="evaluation.cast.threshold_split='val'"):
        run_cast(ctx, no_val, {"selected": {"layer": 2}}, torch.ones(64), "train", CastSettings("selected", "dim",
                                                                                                "val", 1.0), tmp_path)
