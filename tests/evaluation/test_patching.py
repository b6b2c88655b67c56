"""Activation patching sweeps on the tiny Llama: the normalised metric by hand, exact 0 and 1 where the model's
structure forces them, a 2-prompt case computed with independent hooks, mean vs paired corruption, a zeroed head,
and one-line errors for bad settings."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import refusal_score, resolve_refusal_tokens
from refusal.data import PromptSet
from refusal.data.records import PromptRecord
from refusal.errors import ConfigError
from refusal.evaluation.context import EvalContext
from refusal.evaluation.patch_sites import all_sites, capture, site_scores
from refusal.evaluation.patching import PatchingSettings, normalised, run_patching
from refusal.model.chat import ChatFormatter
from refusal.model.loading import LoadedModel
from refusal.utils.io import json_safe

CATS = ["cyber", "fraud", "cyber", "fraud"]


def _prompts(texts, n_toxic=4, n_safe=4) -> PromptSet:
    return PromptSet([PromptRecord(f"{split}-{label}-{i}", f"{text} ({split})", CATS[i] if label == "toxic" else
                                   "benign", label, "test", split)
                      for split in ("train", "test") for label, n in (("toxic", n_toxic), ("safe", n_safe))
                      for i, text in enumerate(texts[label][:n])])


def _ctx(loaded, prompts, tmp_path, batch_size=4):
    return EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts.filter(split="test"),
                       SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer), batch_size,
                       max_new_tokens=2, boot=Bootstrap(50, 0.95, "percentile"), seed=0, out_dir=tmp_path)


def _settings(**kw) -> PatchingSettings:
    return dataclasses.replace(PatchingSettings(), **kw)


def test_the_normalised_metric_by_hand():
    assert normalised(1.5, 2.0, 1.0, "denoising") == 0.5 and normalised(1.2, 2.0, 1.0, "noising") == pytest.approx(0.8)
    assert normalised(1.0, 2.0, 1.0, "denoising") == 0 and normalised(1.0, 2.0, 1.0, "noising") == 1
    assert math.isnan(normalised(1.0, 1.0, 1.0, "noising"))


def test_self_patching_recovers_exactly_and_patching_nothing_gives_zero(loaded, texts, tmp_path):
    ctx = _ctx(loaded, _prompts(texts), tmp_path, batch_size=3)
    toxic, safe = texts["toxic"], texts["safe"]
    n_pos = ctx.formatter.n_post_instruction
    acts, clean = capture(ctx, toxic, [0, 1, 2, 3], n_pos, "hook_resid_pre")
    corrupt = site_scores(ctx, safe, lambda rows: [], n_pos, "hook_resid_pre")
    sites = all_sites(["resid", "head", "mlp"], [1], n_pos, 4)
    own = site_scores(ctx, toxic, lambda rows: [(s, acts.value(s, rows, 16)) for s in sites], n_pos, "hook_resid_pre")
    assert torch.equal(own, clean)  # every site of layer 1 set to its own clean value
    assert normalised(float(own.mean()), float(clean.mean()), float(corrupt.mean()), "denoising") == 1.0
    _, safe_scores = capture(ctx, safe, [1], n_pos, "hook_resid_pre")
    assert torch.equal(corrupt, safe_scores)  # nothing patched: the corrupt scores, bit for bit -> effect 0


def test_the_last_layer_residual_is_full_recovery_at_the_last_position_and_nothing_before(loaded, texts, tmp_path):
    prompts = _prompts(texts)
    ctx = _ctx(loaded, prompts, tmp_path)
    s = _settings(layers=[3], components=("resid",), resid_hook="hook_resid_post")
    out = run_patching(ctx, prompts, s, tmp_path)
    for direction in ("denoising", "noising"):
        for group in ("all", "cyber", "fraud"):
            row = out["effects"][direction]["resid"][group][0]
            assert row[-1] == pytest.approx(1.0, abs=1e-6)
            assert row[:-1] == [0.0] * (len(row) - 1)  # no path from an earlier position's last-layer output


def _mlp_out(model, layer):
    store = {}
    handle = model.model.layers[layer].mlp.register_forward_hook(lambda m, a, o: store.__setitem__("x", o.detach()))
    return store, handle


def _alone(loaded, fmt, prompt, layer, n_pos, replace=None):
    """(score, MLP output of ``layer`` at the last n_pos tokens) of ``prompt`` alone, that output replaced."""
    model, toks = loaded.model, resolve_refusal_tokens(loaded.tokenizer)
    store, h = _mlp_out(model, layer)
    edit = None if replace is None else model.model.layers[layer].mlp.register_forward_hook(
        lambda m, a, o: torch.cat([o[:, :-n_pos], replace], 1))
    try:
        with torch.no_grad():
            logits = model(**fmt.encode([prompt]).model_inputs(), use_cache=False).logits[:, -1]
    finally:
        h.remove()
        if edit:
            edit.remove()
    return float(refusal_score(logits, toks)[0]), store["x"][:, -n_pos:]


def test_a_two_prompt_case_by_hand(loaded, texts, tmp_path):
    prompts = PromptSet([PromptRecord(f"{lb}-{i}", texts[lb][i], c, lb, "test", "train")
                         for lb, cats in (("toxic", ["cyber", "fraud"]), ("safe", ["benign"] * 2))
                         for i, c in enumerate(cats)])
    ctx = _ctx(loaded, prompts, tmp_path)
    s = _settings(layers=[1], components=("mlp",), n_per_category=1, n_safe=2)
    out = run_patching(ctx, prompts, s, tmp_path)
    fmt, n_pos = ctx.formatter, ctx.formatter.n_post_instruction
    (a, b), (c, d) = texts["toxic"][:2], texts["safe"][:2]
    (sa, xa), (sb, xb), (sc, xc), (sd, xd) = (_alone(loaded, fmt, p, 1, n_pos) for p in (a, b, c, d))
    p_ca, p_db = _alone(loaded, fmt, c, 1, n_pos, xa)[0], _alone(loaded, fmt, d, 1, n_pos, xb)[0]
    p_ac, p_bd = _alone(loaded, fmt, a, 1, n_pos, xc)[0], _alone(loaded, fmt, b, 1, n_pos, xd)[0]
    gap = (sa + sb) / 2 - (sc + sd) / 2
    want = {"denoising": {"all": ((p_ca + p_db) / 2 - (sc + sd) / 2) / gap, "cyber": (p_ca - sc) / (sa - sc),
                          "fraud": (p_db - sd) / (sb - sd)},
            "noising": {"all": ((sa + sb) / 2 - (p_ac + p_bd) / 2) / gap, "cyber": (sa - p_ac) / (sa - sc),
                        "fraud": (sb - p_bd) / (sb - sd)}}
    for direction, by in want.items():
        for group, value in by.items():
            assert out["effects"][direction]["mlp"][group][0] == pytest.approx(value, abs=2e-5)
    assert out["baseline"]["denoising"]["cyber"]["m_clean"] == pytest.approx(sa, abs=1e-5)


def test_mean_corruption_patches_the_mean_safe_activation(loaded, texts, tmp_path):
    prompts = _prompts(texts)
    ctx = _ctx(loaded, prompts, tmp_path)
    s = _settings(layers=[3], components=("resid",), resid_hook="hook_resid_post", directions=("noising",))
    out = run_patching(ctx, prompts, dataclasses.replace(s, corruption="mean"), tmp_path)
    n_pos = ctx.formatter.n_post_instruction
    safe = [r.prompt for r in prompts.filter(split="train", label="safe")]
    toxic = [r.prompt for r in prompts.filter(split="train", label="toxic")]
    acts, safe_scores = capture(ctx, safe, [3], n_pos, "hook_resid_post")
    _, tox_scores = capture(ctx, toxic, [3], n_pos, "hook_resid_post")
    with torch.no_grad():  # the last layer's output at the last position, replaced by the safe mean
        logits = loaded.model.lm_head(loaded.model.model.norm(acts.resid[:, 0, -1].mean(0)))
    m_patched = float(refusal_score(logits, ctx.refusal_token_ids))
    want = (float(tox_scores.mean()) - m_patched) / (float(tox_scores.mean()) - float(safe_scores.mean()))
    assert out["effects"]["noising"]["resid"]["all"][0][-1] == pytest.approx(want, abs=1e-4)
    assert abs(want - 1.0) > 1e-3  # paired corruption gives exactly 1 here (previous test); the mean does not


def test_with_one_prompt_per_side_mean_and_paired_agree(loaded, texts, tmp_path):
    prompts = _prompts(texts)
    ctx = _ctx(loaded, prompts, tmp_path)
    s = _settings(layers=[1, 2], components=("heads", "mlp"), n_per_category=1, n_safe=1)
    paired, mean = (run_patching(ctx, prompts, dataclasses.replace(s, corruption=c), tmp_path)["effects"]
                    for c in ("paired", "mean"))
    assert paired == mean


def test_a_zeroed_head_has_no_patching_effect(loaded, texts, tmp_path):
    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight[:, 16:32] = 0  # head 1 of layer 2 writes nothing
    dead = LoadedModel(model=model, tokenizer=loaded.tokenizer, name="tiny-dead-head")
    prompts = _prompts(texts)
    out = run_patching(_ctx(dead, prompts, tmp_path), prompts, _settings(layers=[2], components=("heads",)), tmp_path)
    for direction in ("denoising", "noising"):
        for group in ("all", "cyber", "fraud"):
            heads = out["effects"][direction]["head"][group][0]
            assert heads[1] == 0.0 and any(abs(v) > 1e-6 for v in heads)


def test_the_result_is_json_and_writes_its_figures(loaded, texts, tmp_path):
    prompts = _prompts(texts)
    out = run_patching(_ctx(loaded, prompts, tmp_path), prompts, _settings(layers=[1, 2]), tmp_path)
    json.dumps(json_safe(out), allow_nan=False)
    assert set(out["plots"]) == {"resid_denoising", "resid_noising", "heads_denoising", "heads_noising", "mlp"}
    for path in out["plots"].values():
        assert open(path, "rb").read(4) == b"\x89PNG"
    assert len(out["effects"]["noising"]["resid"]["all"][0]) == out["n_positions"] == len(out["position_tokens"])


GOOD = {f.name: f.default for f in dataclasses.fields(PatchingSettings)}


@pytest.mark.parametrize("key,value,match", [
    ("corruption", "shuffled", r"evaluation.patching.corruption='shuffled' is not valid; choose one of \['paired', "),
    ("directions", ["both"], r"evaluation.patching.directions entry='both' is not valid; choose one of \['denoising'"),
    ("directions", [], r"evaluation.patching.directions=\[\] is not valid; use a non-empty list"),
    ("components", ["attn"], r"components entry='attn' is not valid; choose one of \['resid', 'heads', 'mlp'\]"),
    ("resid_hook", "hook_mlp_out", r"resid_hook='hook_mlp_out' is not valid; choose one of \['hook_resid_pre'"),
    ("split", "dev", r"evaluation.patching.split='dev' is not valid"),
    ("n_safe", 0, r"evaluation.patching.n_safe=0 is not valid; use an int >= 1"),
    ("positions", 0, r"evaluation.patching.positions=0 is not valid; use an int >= 1"),
    ("layers", "some", r"evaluation.patching.layers='some' is not valid; use all, mid"),
    ("colour", "red", r"evaluation.patching.colour is not a valid key; choose from \['split'"),
])
def test_bad_settings_are_one_line_errors(key, value, match):
    assert PatchingSettings.from_config(GOOD) == PatchingSettings()
    with pytest.raises(ConfigError, match=match) as err:
        PatchingSettings.from_config({**GOOD, key: value})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"evaluation.patching.n_safe is missing"):
        PatchingSettings.from_config({k: v for k, v in GOOD.items() if k != "n_safe"})


def test_a_split_without_safe_prompts_is_refused(loaded, texts, tmp_path):
    prompts = _prompts(texts)
    no_safe = PromptSet([r for r in prompts if not (r.split == "train" and r.label == "safe")])
    with pytest.raises(ConfigError, match="evaluation.patching.split='train' has no safe prompts"):
        run_patching(_ctx(loaded, no_safe, tmp_path), no_safe, _settings(), tmp_path)
