"""Linear probes: a planted linear feature is found (accuracy ≈ 1, selective, its direction recovered), random labels
give selectivity ≈ 0, control labels keep the label counts, the batched fit equals the one-probe fit, the stage on the
tiny Llama writes unit directions and repeats itself with the same seed, and bad settings are one-line errors."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import resolve_refusal_tokens
from refusal.errors import ConfigError
from refusal.evaluation.context import EvalContext
from refusal.evaluation.estimators import fit_probe
from refusal.evaluation.probes import FILE, ProbeSettings, control_labels, fit_logistic, probe_task, run_probes
from refusal.model.chat import ChatFormatter

PROBES = {"layers": "all", "position": "last", "split": "train", "max_prompts": 512, "l2": 1e-2, "control_draws": 2}
TOLERANCE = 0.12  # |selectivity| on random labels: ~3 standard errors of an accuracy difference on 400 prompts


def settings(**over) -> ProbeSettings:
    return ProbeSettings.from_config(OmegaConf.create({**PROBES, **over}))


def planted(n: int, seed: int, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Two streams of Gaussian features [2, n, d] and balanced labels: stream 0 carries the label along e_0 (margin
    3), stream 1 is pure noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2 == 0
    x = torch.randn(2, n, d, generator=g, dtype=torch.float64)
    x[0, :, 0] += 3.0 * (2 * y.double() - 1)
    return x, y


def test_planted_feature_is_found_and_selective():
    (xt, yt), (xe, ye) = planted(400, 0), planted(400, 1)
    out = probe_task(xt, yt, xe, ye, l2=1e-2, draws=2, seed=0)
    assert out["accuracy"][0] > 0.97 and out["selectivity"][0] > 0.35
    assert abs(out["control"][0] - 0.5) < TOLERANCE  # shuffled labels: chance
    assert abs(out["selectivity"][1]) < TOLERANCE  # the noise stream reads nothing
    assert out["directions"][0, 0] > 0.9  # the planted direction, pointing to the positive class
    torch.testing.assert_close(out["directions"].norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert out["majority"] == 0.5


def test_random_labels_give_selectivity_near_zero():
    g = torch.Generator().manual_seed(3)
    xt, xe = torch.randn(3, 400, 16, generator=g), torch.randn(3, 400, 16, generator=g)
    yt, ye = torch.rand(400, generator=g) > 0.5, torch.rand(400, generator=g) > 0.5
    out = probe_task(xt, yt, xe, ye, l2=1e-2, draws=3, seed=0)
    assert (out["selectivity"].abs() < TOLERANCE).all(), out["selectivity"]
    assert ((out["accuracy"] - 0.5).abs() < TOLERANCE).all()


def test_control_labels_keep_the_marginals_and_are_seeded():
    y = torch.tensor([True] * 7 + [False] * 23)
    c = control_labels(y, 0, "task", 0)
    assert int(c.sum()) == 7 and len(c) == 30 and not torch.equal(c, y)
    assert torch.equal(c, control_labels(y, 0, "task", 0))
    assert not torch.equal(c, control_labels(y, 0, "task", 1)) and not torch.equal(c, control_labels(y, 1, "task", 0))


def test_batched_fit_equals_single_probe_fits():
    x, y = planted(60, 5, d=6)
    w, b = fit_logistic(x, y, 0.1)
    for k in range(2):
        ref = fit_probe(x[k], y, 0.1)  # refusal/evaluation/estimators.py: the same objective, one probe
        torch.testing.assert_close(w[k], ref[:-1], atol=1e-5, rtol=1e-4)
        assert float(b[k]) == pytest.approx(float(ref[-1]), abs=1e-5)


@pytest.fixture(scope="module")
def prompts(make_prompts):
    return make_prompts(12)


@pytest.fixture(scope="module")
def ctx(loaded, prompts):
    return EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts.filter(split="val"),
                       SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer), batch_size=8,
                       max_new_tokens=2, boot=Bootstrap(100, 0.95, "percentile"), seed=0, out_dir=Path("."))


def test_stage_on_the_tiny_model_writes_unit_directions_and_repeats_itself(ctx, prompts, tmp_path):
    s = settings(layers=[1, -1], position="post_instruction", control_draws=1)
    out = run_probes(ctx, prompts, s, tmp_path / "a", "val")
    assert out["layers"] == [1, 4]  # streams 0..n_layers: -1 is the last layer's output
    assert [t["task"] for t in out["tasks"]] == ["toxic_vs_safe", "category:cyber", "category:fraud",
                                                  "category:violence"]
    tvs = out["tasks"][0]
    assert (tvs["n_train"], tvs["n_eval"]) == (24 + 8, 6 + 2) and tvs["majority"] == 0.75  # toxic 6, safe 2
    for t in out["tasks"]:
        assert t["selectivity"] == pytest.approx([a - c for a, c in zip(t["accuracy"], t["control"])])
        assert all(lo <= a <= hi for lo, a, hi in zip(t["ci_low"], t["accuracy"], t["ci_high"]))
    assert len(out["hard_predicted_toxic"]) == 2 and Path(out["plot"]).is_file()
    saved = load_file(str(tmp_path / "a" / FILE))
    assert saved["layers"].tolist() == [1, 4] and saved["toxic_vs_safe"].shape == (2, ctx.loaded.d_model)
    torch.testing.assert_close(saved["category:fraud"].norm(dim=1), torch.ones(2))
    again = run_probes(ctx, prompts, s, tmp_path / "b", "val")
    assert again["tasks"] == out["tasks"] and again["hard_predicted_toxic"] == out["hard_predicted_toxic"]
    assert torch.equal(load_file(str(tmp_path / "b" / FILE))["toxic_vs_safe"], saved["toxic_vs_safe"])


def test_the_evaluation_split_is_refused(ctx, prompts, tmp_path):
    with pytest.raises(ConfigError, match="probes.split='val' is the evaluation split"):
        run_probes(ctx, prompts, settings(split="val"), tmp_path, "val")


@pytest.mark.parametrize("key,value,match", [
    ("layers", "first", "evaluation.probes.layers='first' is not valid; use all"),
    ("position", "mean", "evaluation.probes.position='mean' is not valid; choose one of"),
    ("split", "dev", "evaluation.probes.split='dev' is not valid"),
    ("max_prompts", 0, "evaluation.probes.max_prompts=0 is not valid"),
    ("l2", 0, "evaluation.probes.l2=0 is not valid; use a number > 0"),
    ("control_draws", 0, "evaluation.probes.control_draws=0 is not valid"),
])
def test_bad_settings_are_one_line_errors(key, value, match):
    with pytest.raises(ConfigError, match=match) as err:
        settings(**{key: value})
    assert "\n" not in str(err.value)


def test_the_schema_takes_the_defaults():
    from refusal.evaluation.probes import ProbesSchema

    cfg = OmegaConf.merge(OmegaConf.structured(ProbesSchema), PROBES)
    assert ProbeSettings.from_config(cfg) == settings()
    assert ProbeSettings.from_config(OmegaConf.merge(cfg, {"layers": [2, -1]})).layers == [2, -1]
