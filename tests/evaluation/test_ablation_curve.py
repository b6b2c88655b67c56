"""Ablation curves on the tiny Llama: the ranking, the k grid, k = 0 is the unablated score, k = all is the model
with every head and MLP ablated by hand (project interventions), random controls are seeded, bad settings fail."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from refusal.behavior.score import refusal_score
from refusal.errors import ConfigError
from refusal.evaluation.ablation_curve import AblationCurveSettings, k_grid, rank_components, run_ablation_curve
from refusal.evaluation.interventions import ZeroAblate, intervene
from refusal.evaluation.measure import last_logits
from refusal.evaluation.patching import PatchingSettings, run_patching
from refusal.model.hooks import capture_activations
from refusal.utils.io import json_safe

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import resolve_refusal_tokens
from refusal.data import PromptSet
from refusal.data.records import PromptRecord
from refusal.evaluation.context import EvalContext
from refusal.model.chat import ChatFormatter

CATS = ["cyber", "fraud", "cyber", "fraud"]


def _prompts(texts) -> PromptSet:
    return PromptSet([PromptRecord(f"{split}-{label}-{i}", f"{text} ({split})", CATS[i] if label == "toxic" else
                                   "benign", label, "test", split)
                      for split in ("train", "test") for label in ("toxic", "safe")
                      for i, text in enumerate(texts[label])])


def _ctx(loaded, prompts, tmp_path):
    return EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts.filter(split="test"),
                       SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer), 4,
                       max_new_tokens=2, boot=Bootstrap(50, 0.95, "percentile"), seed=0, out_dir=tmp_path)


def _patching(n_pos: int, seed: int = 0) -> dict:
    """A patching result with random pooled noising effects for the tiny model's 4 layers x 4 heads and 4 MLPs."""
    rng = np.random.default_rng(seed)
    return {"layers": [0, 1, 2, 3], "n_positions": n_pos, "resid_hook": "hook_resid_pre", "directions": ["noising"],
            "components": ["heads", "mlp"], "effects": {"noising": {
                "head": {"all": rng.normal(size=(4, 4)).tolist()}, "mlp": {"all": rng.normal(size=4).tolist()}}}}


def _settings(**kw) -> AblationCurveSettings:
    return dataclasses.replace(AblationCurveSettings(), **kw)


def test_the_ranking_puts_the_largest_effect_first_nan_last_ties_in_model_order():
    patching = {"layers": [0, 1], "effects": {"noising": {"head": {"all": [[0.5, None], [0.5, 2.0]]},
                                                           "mlp": {"all": [float("nan"), -1.0]}}}}
    ranked = rank_components(patching, _settings())
    assert [s.label for s, _ in ranked] == ["L1.H1", "L0.H0", "L1.H0", "L1.MLP", "L0.H1", "L0.MLP"]
    with pytest.raises(ConfigError, match="rank_by='denoising' needs the patching stage to run denoising"):
        rank_components(patching, _settings(rank_by="denoising"))


def test_the_k_grid():
    assert k_grid("auto", 20) == [0, 1, 2, 4, 8, 16, 20] and k_grid("auto", 16) == [0, 1, 2, 4, 8, 16]
    assert k_grid((0, 3), 20) == [0, 3]
    with pytest.raises(ConfigError, match=r"ks entries \[30\] exceed the 20 ranked components"):
        k_grid((0, 30), 20)


@dataclass
class SetTo:
    hook: str
    value: torch.Tensor  # [P, d]

    def edit(self, x):
        return self.value.to(x.dtype).expand_as(x).clone()


def _scores(ctx, prompts) -> float:
    return float(refusal_score(last_logits(ctx.model, ctx.formatter, prompts, ctx.batch_size), ctx.refusal_token_ids)
                 .mean())


@pytest.mark.parametrize("ablation,components", [("zero", ("heads", "mlp")), ("mean", ("heads", "mlp")),
                                                  ("zero", ("mlp",)), ("mean", ("heads",))])
def test_k_zero_is_the_baseline_and_k_all_is_the_hand_ablated_model(loaded, texts, tmp_path, ablation, components):
    prompts = _prompts(texts)
    ctx = _ctx(loaded, prompts, tmp_path)
    n_pos = ctx.formatter.n_post_instruction
    s = _settings(ablation=ablation, n_random=0, components=components)
    out = run_ablation_curve(ctx, prompts, s, tmp_path, _patching(n_pos))
    n = 4 * ("mlp" in components) + 16 * ("heads" in components)
    assert out["n_components"] == n and out["ks"] == k_grid("auto", n)
    toxic = [r.prompt for r in ctx.prompts.filter(label="toxic")]
    assert out["curve"]["all"][0] == pytest.approx(_scores(ctx, toxic), abs=1e-6)
    # every head ablated = the attention output ablated (o_proj: no bias)
    kinds = [{"heads": "hook_attn_out", "mlp": "hook_mlp_out"}[c] for c in components]
    if ablation == "zero":
        edits = [ZeroAblate(f"blocks.{layer}.{k}") for layer in range(4) for k in kinds]
    else:
        safe = [r.prompt for r in prompts.filter(split="train", label="safe")]
        hooks = [f"blocks.{layer}.{k}" for layer in range(4) for k in kinds]
        with capture_activations(ctx.model, hooks, stop_early=False) as cache:
            enc = ctx.formatter.encode(safe)
            ctx.model(**enc.model_inputs(), use_cache=False)
        edits = [SetTo(h, cache[h][:, -n_pos:].double().mean(0).float()) for h in hooks]
    with intervene(ctx.model, edits, positions=n_pos):
        want = _scores(ctx, toxic)
    assert out["curve"]["all"][-1] == pytest.approx(want, abs=1e-5)
    assert abs(out["curve"]["all"][-1] - out["curve"]["all"][0]) > 1e-3
    cyber = [r.prompt for r in ctx.prompts.filter(label="toxic", category="cyber")]
    with intervene(ctx.model, edits, positions=n_pos):
        assert out["curve"]["cyber"][-1] == pytest.approx(_scores(ctx, cyber), abs=1e-5)
    json.dumps(json_safe(out), allow_nan=False)
    assert open(out["plot"], "rb").read(4) == b"\x89PNG"


def test_random_controls_are_seeded(loaded, texts, tmp_path):
    prompts = _prompts(texts)
    ctx = _ctx(loaded, prompts, tmp_path)
    patching = _patching(ctx.formatter.n_post_instruction)
    s = _settings(ablation="zero", ks=(0, 2, 5), n_random=3)
    first, again = (run_ablation_curve(ctx, prompts, s, tmp_path, patching)["random"] for _ in range(2))
    assert first == again
    other = run_ablation_curve(dataclasses.replace(ctx, seed=1), prompts, s, tmp_path, patching)["random"]
    assert other["all"]["mean"][0] == first["all"]["mean"][0] and other["all"]["mean"][1:] != first["all"]["mean"][1:]
    assert all(lo <= m <= hi for lo, m, hi in zip(first["all"]["min"], first["all"]["mean"], first["all"]["max"]))


def test_end_to_end_from_patching_with_generation(loaded, texts, tmp_path):
    prompts = _prompts(texts)
    ctx = _ctx(loaded, prompts, tmp_path)
    patching = run_patching(ctx, prompts, dataclasses.replace(PatchingSettings(), layers=[1, 2],
                                                              components=("heads", "mlp"), directions=("noising",)),
                            tmp_path)
    out = run_ablation_curve(ctx, prompts, _settings(ks=(0, 3), n_random=1, generate_ks=(3,)), tmp_path, patching)
    assert out["n_components"] == 10 and [r["component"] for r in out["ranking"]][0] in {
        f"L{layer}.{c}" for layer in (1, 2) for c in ("H0", "H1", "H2", "H3", "MLP")}
    assert {(r["condition"], r["category"]) for r in out["generated"]} >= {("top3", "all"), ("top3", "cyber")}
    assert (tmp_path / "responses" / "ablation_curve_top3.jsonl").exists()


GOOD = {f.name: f.default for f in dataclasses.fields(AblationCurveSettings)}


@pytest.mark.parametrize("key,value,match", [
    ("rank_by", "both", r"evaluation.ablation_curve.rank_by='both' is not valid; choose one of \['denoising', "),
    ("ablation", "resample", r"ablation_curve.ablation='resample' is not valid; choose one of \['mean', 'zero'\]"),
    ("components", ["resid"], r"components entry='resid' is not valid; choose one of \['heads', 'mlp'\]"),
    ("ks", "log", r"evaluation.ablation_curve.ks='log' is not valid; use auto or a non-empty list"),
    ("ks", [0, -1], r"evaluation.ablation_curve.ks entry=-1 is not valid; use an int >= 0"),
    ("n_random", -1, r"evaluation.ablation_curve.n_random=-1 is not valid; use an int >= 0"),
    ("generate_ks", 4, r"evaluation.ablation_curve.generate_ks=4 is not valid; use a list of ints"),
    ("mean_split", "dev", r"evaluation.ablation_curve.mean_split='dev' is not valid"),
    ("extra", 1, r"evaluation.ablation_curve.extra is not a valid key"),
])
def test_bad_settings_are_one_line_errors(key, value, match):
    assert AblationCurveSettings.from_config(GOOD) == AblationCurveSettings()
    with pytest.raises(ConfigError, match=match) as err:
        AblationCurveSettings.from_config({**GOOD, key: value})
    assert "\n" not in str(err.value)
