"""Logit and tuned lens on the tiny Llama: the logit lens by hand (RMSNorm + unembedding of a captured stream), its
last stream = the model's own refusal score, the untrained tuned lens = the logit lens, training lowers the held-out
KL, save/reload/reuse, seeded determinism, the emergence layer, and one-line errors for bad settings."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import refusal_score, resolve_refusal_tokens
from refusal.errors import ConfigError
from refusal.evaluation.context import EvalContext
from refusal.evaluation.lens import LensSettings, emergence, lens_readouts, run_lens
from refusal.evaluation.measure import last_logits
from refusal.evaluation.residual import readout, residual_batches
from refusal.evaluation.tuned_lens import FILE, TunedLens, fit_tuned_lens, load_lens
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations

LENS = {"positions": "post_instruction", "emergence_fraction": 0.5,
        "tuned": {"enabled": True, "split": "train", "max_prompts": 256, "positions": "all", "max_tokens": 4096,
                  "steps": 60, "batch_size": 128, "lr": 1e-3, "weight_decay": 1e-3}}


def settings(**over) -> LensSettings:
    cfg = OmegaConf.create(LENS)
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return LensSettings.from_config(cfg)


@pytest.fixture(scope="module")
def prompts(make_prompts):
    return make_prompts(12)


@pytest.fixture(scope="module")
def ctx(loaded, prompts):
    return EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts.filter(split="val"),
                       SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer), batch_size=8,
                       max_new_tokens=2, boot=Bootstrap(100, 0.95, "percentile"), seed=0, out_dir=Path("."))


@pytest.fixture(scope="module")
def trained(ctx, prompts, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lens")
    return run_dir, run_lens(ctx, prompts, settings(), run_dir, "val")


def test_logit_lens_by_hand_and_at_the_last_stream_the_models_refusal_score(ctx):
    texts = [r.prompt for r in ctx.prompts][:5]
    read = lens_readouts(ctx, texts, 2)
    own = refusal_score(last_logits(ctx.model, ctx.formatter, texts, 3), ctx.refusal_token_ids)
    torch.testing.assert_close(read["logit"][:, -1, -1], own, atol=1e-5, rtol=1e-5)
    assert read["kl_logit"][:, -1].abs().max() < 1e-9  # the last stream is the final distribution itself
    enc = ctx.formatter.encode(texts[:1])  # one prompt: no padding
    with torch.no_grad(), capture_activations(ctx.model, ["blocks.2.hook_resid_pre"], stop_early=False) as cache:
        ctx.model(**enc.model_inputs(), use_cache=False)
    h = cache["blocks.2.hook_resid_pre"][0, -2].double()
    norm = ctx.model.model.norm
    normed = h / torch.sqrt(h.pow(2).mean() + norm.variance_epsilon) * norm.weight.double()
    logits = normed @ ctx.model.lm_head.weight.double().T
    p = torch.softmax(logits, -1)[ctx.refusal_token_ids].sum()
    assert float(read["logit"][0, 2, 0]) == pytest.approx(float(torch.log(p) - torch.log1p(-p)), abs=1e-4)


def test_untrained_tuned_lens_is_the_logit_lens_and_the_last_stream_gives_the_models_logits(ctx):
    texts = [r.prompt for r in ctx.prompts][:4]
    lens = TunedLens(ctx.loaded.n_layers, ctx.loaded.d_model)
    read = lens_readouts(ctx, texts, 3, lens)
    torch.testing.assert_close(read["tuned"], read["logit"], atol=1e-6, rtol=1e-6)
    enc, acts = next(residual_batches(ctx, texts))
    with torch.no_grad():
        model_logits = ctx.model(**enc.model_inputs(), use_cache=False).logits[:, -1]
        torch.testing.assert_close(readout(ctx.model, lens(ctx.loaded.n_layers, acts[:, -1, -1])), model_logits)


def test_training_lowers_the_held_out_kl_and_the_run_writes_its_outputs(ctx, trained):
    run_dir, result = trained
    kl = result["kl"]
    assert result["lenses"] == ["logit", "tuned"] and len(kl["tuned"]) == 5 and kl["tuned"][-1] == pytest.approx(0)
    # held-out (val) prompts, every stream below the last: the trained translators beat the identity
    assert all(t < 0.7 * lg for t, lg in zip(kl["tuned"][:-1], kl["logit"][:-1])), kl
    assert not result["tuned_training"]["reused"] and result["tuned_training"]["last_loss"] < \
        result["tuned_training"]["first_loss"]
    assert Path(result["plot"]).is_file() and (run_dir / FILE).is_file()
    curve = result["curves"]["logit"]
    assert {"toxic", "safe", "hard", "toxic/cyber", "toxic/fraud", "toxic/violence"} == set(curve)
    assert curve["toxic"]["n"] == 6 and len(curve["toxic"]["mean"]) == 5
    assert len(curve["toxic"]["mean"][0]) == len(result["positions"]) == ctx.formatter.n_post_instruction > 1
    for c in curve.values():
        assert all(lo <= m + 1e-9 and m <= hi + 1e-9 for lo, m, hi in zip(c["ci_low"], c["last"], c["ci_high"]))


def test_saved_lens_reloads_identically_and_a_rerun_reuses_it(ctx, prompts, trained):
    run_dir, first = trained
    texts = [r.prompt for r in ctx.prompts][:4]
    lens, _ = fit_tuned_lens(ctx, prompts, settings().tuned, run_dir)  # reused: same key
    reloaded, meta = load_lens(run_dir / FILE)
    assert "key" in meta
    a, b = lens_readouts(ctx, texts, 2, lens), lens_readouts(ctx, texts, 2, reloaded)
    assert torch.equal(a["tuned"], b["tuned"])
    again = run_lens(ctx, prompts, settings(), run_dir, "val")
    assert again["tuned_training"]["reused"] and again["kl"] == first["kl"] and again["curves"] == first["curves"]
    other = fit_tuned_lens(ctx, prompts, settings(**{"tuned.steps": 2}).tuned, run_dir)[1]
    assert not other["reused"]  # other settings: trained anew (and saved over the old one)


def test_same_seed_same_lens(ctx, prompts, tmp_path):
    s = settings(**{"tuned.steps": 5}).tuned
    a, _ = fit_tuned_lens(ctx, prompts, s, tmp_path / "a")
    b, _ = fit_tuned_lens(ctx, prompts, s, tmp_path / "b")
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and a.weight.abs().sum() > 0


def test_emergence_layer_by_hand():
    curve = {"safe": {"last": [0.0, 0.0, 0.0, 0.0]}, "toxic": {"last": [0.0, 1.0, 3.0, 4.0]},
             "hard": {"last": [0.0, -1.0, -1.0, -2.0]}}
    assert emergence(curve, 0.5) == {"toxic": 2, "hard": None}
    assert emergence(curve, 0.2) == {"toxic": 1, "hard": None}


def test_logit_lens_only_and_the_evaluation_split_is_refused(ctx, prompts, tmp_path):
    out = run_lens(ctx, prompts, settings(**{"tuned.enabled": False, "positions": "last"}), tmp_path, "val")
    assert out["lenses"] == ["logit"] and out["positions"] == [-1] and out["tuned_training"] is None
    with pytest.raises(ConfigError, match="tuned.split='val' is the evaluation split"):
        run_lens(ctx, prompts, settings(**{"tuned.split": "val"}), tmp_path, "val")


@pytest.mark.parametrize("key,value,match", [
    ("positions", "first", "evaluation.lens.positions='first' is not valid; choose one of"),
    ("positions", 0, "evaluation.lens.positions=0 is not valid"),
    ("emergence_fraction", 1.5, "evaluation.lens.emergence_fraction=1.5 is not valid"),
    ("tuned.split", "dev", "evaluation.lens.tuned.split='dev' is not valid; choose one of"),
    ("tuned.positions", "last", "evaluation.lens.tuned.positions='last' is not valid"),
    ("tuned.steps", -1, "evaluation.lens.tuned.steps=-1 is not valid"),
    ("tuned.lr", 0, "evaluation.lens.tuned.lr=0 is not valid"),
    ("tuned.enabled", "yes", "evaluation.lens.tuned.enabled='yes' is not valid"),
])
def test_bad_settings_are_one_line_errors(key, value, match):
    with pytest.raises(ConfigError, match=match) as err:
        settings(**{key: value})
    assert "\n" not in str(err.value)


def test_the_schema_takes_the_defaults():
    from refusal.evaluation.lens import LensSchema

    cfg = OmegaConf.merge(OmegaConf.structured(LensSchema), LENS)
    assert LensSettings.from_config(cfg) == settings()
    assert LensSettings.from_config(OmegaConf.merge(cfg, {"positions": 3})).positions == 3
