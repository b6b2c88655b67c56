"""The refusal direction on the tiny model: difference-in-means candidates by hand, the selection filters
(layer cut, KL, induced refusal) and the fallback when nothing passes."""
import dataclasses
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.score import resolve_refusal_tokens
from refusal.behavior.rates import Bootstrap
from refusal.evaluation.config import settings_from
from refusal.evaluation.context import EvalContext
from refusal.errors import ConfigError
from refusal.evaluation.direction import select_direction, tail_means
from refusal.evaluation.measure import last_logits
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations

BOOT = Bootstrap(n_resamples=100, ci_level=0.95, ci_method="percentile")

REPO = Path(__file__).resolve().parents[2]


def direction_settings(**overrides):
    """The direction settings of conf/evaluation/default.yaml, with ``overrides``."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["model=tiny_llama", "logger=csv"])
    return dataclasses.replace(settings_from(cfg.evaluation).direction, **overrides)


@pytest.fixture(scope="module")
def ctx(loaded):
    from refusal.data import PromptSet

    return EvalContext(loaded, ChatFormatter(loaded.tokenizer), PromptSet([]), SubstringJudge(REFUSAL_SUBSTRINGS),
                       resolve_refusal_tokens(loaded.tokenizer), batch_size=3, max_new_tokens=2, boot=BOOT,
                       seed=0, out_dir=Path("."))


def test_tail_means_by_hand(ctx, texts):
    fmt, model = ctx.formatter, ctx.model
    means = tail_means(model, fmt, texts["toxic"], [0, 2], 2, batch_size=3)
    rows = []
    for p in texts["toxic"]:  # one prompt at a time: no padding at all
        enc = fmt.encode([p])
        with torch.no_grad(), capture_activations(model, ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre"],
                                                  stop_early=False) as cache:
            model(**enc.model_inputs(), use_cache=False)
        rows.append(torch.stack([cache["blocks.0.hook_resid_pre"][0, -2:], cache["blocks.2.hook_resid_pre"][0, -2:]]))
    torch.testing.assert_close(means, torch.stack(rows).double().mean(0), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def candidates(ctx, texts):
    layers = list(range(ctx.loaded.n_layers))
    diff = (tail_means(ctx.model, ctx.formatter, texts["toxic"], layers, 2, 4)
            - tail_means(ctx.model, ctx.formatter, texts["safe"], layers, 2, 4))
    return dict(enumerate(diff))


def test_selection_respects_the_layer_cut_and_picks_the_lowest_ablation_score(ctx, texts, candidates):
    s = direction_settings(max_layer_fraction=0.5, max_kl=10.0, induce_min_score=-100.0)
    out = select_direction(ctx, candidates, texts["toxic"], texts["safe"], s)
    # layer 0 (the embeddings of identical template tokens) has zero candidates: skipped
    assert torch.all(candidates[0] == 0)
    assert {r["layer"] for r in out["candidates"]} == {1} and len(out["candidates"]) == 2
    assert out["filters_passed"] and all(r["passes"] for r in out["candidates"])
    assert out["selected"]["ablation_score"] == min(r["ablation_score"] for r in out["candidates"])
    assert {r["position"] for r in out["candidates"]} == {-2, -1}


def test_nothing_passes_falls_back_and_says_so(ctx, texts, candidates):
    s = direction_settings(max_layer_fraction=1.0, max_kl=0.0, induce_min_score=100.0)
    out = select_direction(ctx, candidates, texts["toxic"], texts["safe"], s)
    assert not out["filters_passed"] and not any(r["passes"] for r in out["candidates"])
    assert out["fallback"] == "max_kl and induce_min_score relaxed"
    assert out["selected"]["ablation_score"] == min(r["ablation_score"] for r in out["candidates"])
    assert all(r["kl_safe"] > 0 for r in out["candidates"])  # the ablation changes the safe prompts' outputs


def test_kl_filter_is_applied(ctx, texts, candidates):
    out = select_direction(ctx, candidates, texts["toxic"], texts["safe"], direction_settings(
        max_layer_fraction=1.0, induce_min_score=-100.0, max_kl=0.0))
    assert not out["filters_passed"]
    kls = sorted(r["kl_safe"] for r in out["candidates"])
    mid = (kls[0] + kls[-1]) / 2
    out = select_direction(ctx, candidates, texts["toxic"], texts["safe"], direction_settings(
        max_layer_fraction=1.0, induce_min_score=-100.0, max_kl=mid))
    assert all(r["passes"] == (r["kl_safe"] <= mid) for r in out["candidates"])
    assert out["selected"]["kl_safe"] <= mid and out["fallback"] is None
    # nothing induces refusal: the KL filter still holds in the fallback
    out = select_direction(ctx, candidates, texts["toxic"], texts["safe"], direction_settings(
        max_layer_fraction=1.0, induce_min_score=100.0, max_kl=mid))
    assert not out["filters_passed"] and out["fallback"] == "induce_min_score relaxed"
    assert out["selected"]["kl_safe"] <= mid
    assert out["selected"]["ablation_score"] == min(r["ablation_score"] for r in out["candidates"] if r["kl_safe"] <= mid)


def test_candidate_layers_restricts_the_scored_layers(ctx, texts, candidates):
    s = direction_settings(max_layer_fraction=1.0, max_kl=10.0, induce_min_score=-100.0, candidate_layers=[1, 3])
    out = select_direction(ctx, candidates, texts["toxic"], texts["safe"], s)
    assert {r["layer"] for r in out["candidates"]} == {1, 3}
    s = direction_settings(max_layer_fraction=0.5, candidate_layers="3")
    with pytest.raises(Exception, match="candidate_layers='3'"):
        select_direction(ctx, candidates, texts["toxic"], texts["safe"], s)


def split_prompts(texts):
    """``texts`` in the train, val and test splits; toxic ones in two categories."""
    from refusal.data import PromptSet
    from refusal.data.records import PromptRecord

    cats = ["cyber", "cyber", "fraud", "fraud"]
    return PromptSet([PromptRecord(f"{split}-{label}-{i}", f"{text} ({split})", cats[i] if label == "toxic" else
                                   "benign", label, "test", split)
                      for split in ("train", "val", "test") for label in ("toxic", "safe")
                      for i, text in enumerate(texts[label])])


def test_filter_by_score_contrasts_refused_toxic_with_answered_safe(ctx, texts, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from refusal.evaluation import direction

    # a stand-in refusal score with both signs on each side: the first logit minus its median over the batch
    monkeypatch.setattr(direction, "refusal_score", lambda logits, ids: logits[:, 0] - logits[:, 0].median())
    prompts = split_prompts(texts)
    want = {}
    for label in ("toxic", "safe"):
        recs = list(prompts.filter(split="train", label=label))
        logit0 = last_logits(ctx.model, ctx.formatter, [r.prompt for r in recs], 3)[:, 0]
        score = logit0 - logit0.median()
        want[label] = [r for r, x in zip(recs, score) if (x > 0 if label == "toxic" else x < 0)]
        assert 0 < len(want[label]) < len(recs)  # the filter drops some prompts on each side
    toxic, safe = direction.contrast(ctx, prompts, direction_settings(filter_by_score=True), "train")
    assert [r.id for r in toxic] == [r.id for r in want["toxic"]] and [r.id for r in safe] == [r.id for r in want["safe"]]
    everything = direction.contrast(ctx, prompts, direction_settings(filter_by_score=False), "train")
    assert [len(x) for x in everything] == [4, 4]
    # the candidates are the difference in means of the kept prompts
    s = direction_settings(filter_by_score=True, candidate_layers=[1, 2], max_layer_fraction=1.0, max_kl=10.0,
                           induce_min_score=-100.0)
    ctx_out = dataclasses.replace(ctx, prompts=prompts.filter(split="test"), out_dir=tmp_path)
    from refusal.evaluation.direction_stage import run_direction
    run_direction(ctx_out, prompts, s, tmp_path, "test")
    n_pos = ctx.formatter.n_post_instruction
    by_hand = (tail_means(ctx.model, ctx.formatter, [r.prompt for r in want["toxic"]], [1, 2], n_pos, 3)
               - tail_means(ctx.model, ctx.formatter, [r.prompt for r in want["safe"]], [1, 2], n_pos, 3))
    torch.testing.assert_close(load_file(str(tmp_path / "direction.safetensors"))["candidates"], by_hand.float(),
                               atol=1e-5, rtol=1e-5)


def test_filter_by_score_that_leaves_no_prompt_says_so(ctx, texts):
    from refusal.evaluation.direction import contrast

    # the random tiny model gives its refusal tokens little probability: no toxic prompt has a score > 0
    with pytest.raises(ConfigError, match="no toxic prompts to contrast left by evaluation.direction.filter_by_score"):
        contrast(ctx, split_prompts(texts), direction_settings(filter_by_score=True), "train")


def test_run_direction_computes_candidates_only_at_the_scored_layers(loaded, texts, tmp_path):
    from safetensors.torch import load_file

    from refusal.evaluation.direction_stage import run_direction

    prompts = split_prompts(texts)
    fmt = ChatFormatter(loaded.tokenizer)
    ev = prompts.filter(split="test")
    ctx = EvalContext(loaded, fmt, ev, SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer),
                      batch_size=3, max_new_tokens=2, boot=BOOT, seed=0, out_dir=tmp_path)
    s = direction_settings(candidate_layers=[1, 2, 3], max_layer_fraction=0.7, max_kl=10.0, induce_min_score=-100.0)
    out = run_direction(ctx, prompts, s, tmp_path, "test")
    saved = load_file(str(tmp_path / "direction.safetensors"))
    assert saved["candidate_layers"].tolist() == [1, 2]  # 3 is not below 0.7 * 4
    tr = prompts.filter(split="train")
    want = (tail_means(loaded.model, fmt, [r.prompt for r in tr.filter(label="toxic")], [1, 2], fmt.n_post_instruction, 4)
            - tail_means(loaded.model, fmt, [r.prompt for r in tr.filter(label="safe")], [1, 2], fmt.n_post_instruction, 4))
    torch.testing.assert_close(saved["candidates"], want.float(), atol=1e-5, rtol=1e-5)
    sel = out["selected"]
    torch.testing.assert_close(saved["direction"], want[[1, 2].index(sel["layer"]), sel["position"]].float(),
                               atol=1e-5, rtol=1e-5)
    assert out["per_category"]["categories"] == ["cyber", "fraud"]
    assert {r["layer"] for r in out["selection"]["candidates"]} <= {1, 2}
    assert Path(out["layer_plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the layer scan


def test_the_comparison_with_a_plant_reads_the_stage_outputs(loaded, texts, tmp_path):
    from safetensors.torch import load_file

    from refusal.evaluation.direction_stage import run_direction
    from refusal.evaluation.direction_truth import compare, cosine_plot
    from refusal.organism.adapters import Plant

    prompts = split_prompts(texts)
    ctx = EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts.filter(split="test"),
                      SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer), batch_size=4,
                      max_new_tokens=2, boot=BOOT, seed=0, out_dir=tmp_path)
    s = direction_settings(candidate_layers=[1, 2], max_layer_fraction=1.0, max_kl=10.0, induce_min_score=-100.0,
                           compare_methods=("dim", "pca"))
    out = run_direction(ctx, prompts, s, tmp_path, "test")
    saved = load_file(str(tmp_path / "direction.safetensors"))
    plant = Plant(["shared"], [1], "mlp.down_proj", 1, 128, 64, seed=0)
    with torch.no_grad():
        plant.B[0, :, 0] = -2.0 * saved["direction"]  # the plant writes along the selected direction
    got = compare(out, tmp_path, plant, "shared")
    assert got["cos_selected"] == pytest.approx(1.0, abs=1e-6)
    assert got["cos_methods"]["dim"] == pytest.approx(1.0, abs=1e-6) and got["cos_methods"]["pca"] < 1.0
    sel = out["selected"]
    assert got["cos_candidates"][sel["layer"]][sel["position"]] == pytest.approx(1.0, abs=1e-6)
    assert sorted(got["cos_candidates"]) == [1, 2] and max(map(max, got["cos_candidates"].values())) <= 1 + 1e-9
    rates = {(r["condition"], r["label"]): r["refusal_rate"] for r in out["rates"] if r["category"] == "all"}
    assert (got["ablation_toxic"], got["actadd_safe"]) == (rates[("ablation", "toxic")], rates[("actadd", "safe")])
    assert got["kl_safe_answered"] == out["kl_safe_answered"]["mean"] and got["kl_safe"] == out["kl_safe"]["mean"]
    assert got["passed"] == (
        rates[("ablation", "toxic")] <= 0.1 and rates[("actadd", "safe")] >= 0.8 and got["kl_safe_answered"] <= 0.1)
    older = {k: v for k, v in out.items() if k != "kl_safe_answered"}  # a direction.json from before it was recorded
    assert compare(older, tmp_path, plant, "shared")["passed"] is False
    assert cosine_plot(got, tmp_path / "scan.png").read_bytes()[:4] == b"\x89PNG"


def test_held_out_kl_is_reported_on_every_safe_prompt_and_on_the_ones_the_model_answers(loaded, texts, tmp_path):
    import numpy as np

    from refusal.evaluation.direction import held_out_measures
    from refusal.evaluation.interventions import directional_ablation, intervene
    from refusal.evaluation.measure import kl_per_prompt

    prompts = split_prompts(texts).filter(split="test")
    ctx = EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts, SubstringJudge(REFUSAL_SUBSTRINGS),
                      resolve_refusal_tokens(loaded.tokenizer), batch_size=4, max_new_tokens=2, boot=BOOT, seed=0,
                      out_dir=tmp_path)
    safe = list(prompts.filter(label="safe"))
    refused = {safe[0].id, safe[2].id}  # the baseline judged these two refused
    ctx.baseline_items = {it["id"]: {**it, "refused": it["id"] in refused} for it in ctx.generate(list(prompts))}
    s = direction_settings()
    r = torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(3))
    out = held_out_measures(ctx, r, 1, s)
    base = last_logits(ctx.model, ctx.formatter, [x.prompt for x in safe], 4)
    with intervene(ctx.model, directional_ablation(r, loaded.n_layers, s.ablation_hooks)):
        ablated = last_logits(ctx.model, ctx.formatter, [x.prompt for x in safe], 4)
    kl = kl_per_prompt(base, ablated).numpy()
    keep = np.array([x.id not in refused for x in safe])
    assert out["kl_safe"]["n"] == len(safe) and out["kl_safe"]["mean"] == pytest.approx(kl.mean(), rel=1e-5)
    assert out["kl_safe_answered"]["n"] == len(safe) - 2
    assert out["kl_safe_answered"]["mean"] == pytest.approx(kl[keep].mean(), rel=1e-5)
    assert out["kl_safe_answered"]["mean"] != pytest.approx(out["kl_safe"]["mean"], rel=1e-3)
    low, high = out["kl_safe_answered"]["ci_low"], out["kl_safe_answered"]["ci_high"]
    assert low <= out["kl_safe_answered"]["mean"] <= high


def test_residual_rms_is_over_every_real_token_and_outliers_are_relative_to_the_median(ctx, texts):
    from refusal.evaluation.direction import outlier_dims, residual_stats

    prompts = texts["safe"][:3]
    rms = residual_stats(ctx.model, ctx.formatter, prompts, [1, 2], 2, batch_size=2)[1]
    by_hand = []
    for layer in (1, 2):
        acts = []
        for p in prompts:  # one prompt at a time: no padding
            enc = ctx.formatter.encode([p])
            with capture_activations(ctx.model, [f"blocks.{layer}.hook_resid_pre"], stop_early=False) as cache:
                ctx.model(**enc.model_inputs(), use_cache=False)
            acts.append(cache[f"blocks.{layer}.hook_resid_pre"][0].double())
        by_hand.append(torch.cat(acts).pow(2).mean(0).sqrt())
    torch.testing.assert_close(rms, torch.stack(by_hand), atol=1e-6, rtol=1e-5)
    toy = torch.tensor([[1.0, 1.0, 2.0, 50.0, 1.0], [1.0, 12.0, 1.0, 1.0, 9.0]])
    assert outlier_dims(toy, 10.0).tolist() == [[False, False, False, True, False], [False, True, False, False, False]]


def test_outlier_factor_zeroes_the_candidates_on_the_outlier_dims_only(ctx, texts, tmp_path):
    from safetensors.torch import load_file

    from refusal.evaluation.direction import outlier_dims, residual_stats
    from refusal.evaluation.direction_stage import run_direction

    prompts = split_prompts(texts)
    run = dataclasses.replace(ctx, prompts=prompts.filter(split="test"), out_dir=tmp_path)
    common = dict(candidate_layers=[1, 2], max_layer_fraction=1.0, max_kl=10.0, induce_min_score=-100.0)
    raw_dir, cut_dir = tmp_path / "raw", tmp_path / "cut"
    raw_dir.mkdir(), cut_dir.mkdir()
    run_direction(run, prompts, direction_settings(outlier_factor=0.0, **common), raw_dir, "test")
    out = run_direction(run, prompts, direction_settings(outlier_factor=1.0, **common), cut_dir, "test")
    raw, cut = (load_file(str(d / "direction.safetensors")) for d in (raw_dir, cut_dir))
    safe = [r.prompt for r in prompts.filter(split="train", label="safe")]
    want = outlier_dims(residual_stats(ctx.model, ctx.formatter, safe, [1, 2], 2, 3)[1], 1.0)
    assert 0 < int(want.sum()) < want.numel()  # x1 the median: about half the dims
    assert torch.equal(cut["outlier_dims"], want) and not raw["outlier_dims"].any()
    assert out["outlier_dims"] == {layer: torch.nonzero(want[i]).flatten().tolist() for i, layer in enumerate([1, 2])}
    keep = (~want).float()[:, None, :]
    torch.testing.assert_close(cut["candidates"], raw["candidates"] * keep)
    assert float(cut["candidates"][want[:, None, :].expand_as(cut["candidates"])].abs().sum()) == 0.0


def test_outlier_factor_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"outlier_factor=0\.5 is not valid"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=["model=tiny_llama", "logger=csv",
                                                 "evaluation.direction.outlier_factor=0.5"])
        settings_from(cfg.evaluation)


def _one_at_a_time(ctx, prompts, layer, n_pos, response=None):
    """[n, n_pos, d] resid_pre at ``layer``, last ``n_pos`` tokens, one unpadded prompt (+ response) at a time."""
    rows = []
    for p in prompts:
        enc = ctx.formatter.encode([p], None if response is None else [response])
        with capture_activations(ctx.model, [f"blocks.{layer}.hook_resid_pre"], stop_early=False) as cache:
            ctx.model(**enc.model_inputs(), use_cache=False)
        rows.append(cache[f"blocks.{layer}.hook_resid_pre"][0, -n_pos:].double())
    return torch.stack(rows)


def test_caa_contrasts_the_same_prompts_with_a_refusal_and_a_compliance_opening(ctx, texts, tmp_path):
    from refusal.evaluation.direction_stage import run_direction

    prompts = split_prompts(texts)
    run = dataclasses.replace(ctx, prompts=prompts.filter(split="test"), out_dir=tmp_path)
    s = direction_settings(method="caa", candidate_layers=[1, 2], max_layer_fraction=1.0, max_kl=10.0,
                           induce_min_score=-100.0, outlier_factor=0.0, caa_openings=("No way.", "Sure thing, here"))
    out = run_direction(run, prompts, s, tmp_path, "test")
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "direction.safetensors"))
    train = [r.prompt for r in prompts.filter(split="train", label="toxic")] + [
        r.prompt for r in prompts.filter(split="train", label="safe")]
    for i, layer in enumerate([1, 2]):
        n = ctx.formatter.n_post_instruction
        want = (_one_at_a_time(ctx, train, layer, n, "No way.") - _one_at_a_time(ctx, train, layer, n, "Sure thing, here"))
        torch.testing.assert_close(saved["candidates"][i], want.mean(0).float(), atol=1e-5, rtol=1e-5)
    assert out["method"] == "caa"


def test_every_method_selects_from_its_own_candidates_and_the_comparison_scores_them_alike(ctx, texts, tmp_path):
    from safetensors.torch import load_file

    from refusal.evaluation.direction import residual_tails
    from refusal.evaluation.direction_stage import run_direction
    from refusal.evaluation.estimators import estimate_grid

    prompts = split_prompts(texts)
    run = dataclasses.replace(ctx, prompts=prompts.filter(split="test"), out_dir=tmp_path)
    s = direction_settings(method="lda", compare_methods=("dim", "lda", "pca"), candidate_layers=[1, 2],
                           max_layer_fraction=1.0, max_kl=10.0, induce_min_score=-100.0, outlier_factor=0.0)
    out = run_direction(run, prompts, s, tmp_path, "test")
    tox, saf = ([r.prompt for r in prompts.filter(split="train", label=lb)] for lb in ("toxic", "safe"))
    n = ctx.formatter.n_post_instruction
    want = estimate_grid("lda", residual_tails(ctx.model, ctx.formatter, tox, [1, 2], n, 3)[0],
                         residual_tails(ctx.model, ctx.formatter, saf, [1, 2], n, 3)[0], "auto", s.probe_l2)
    torch.testing.assert_close(load_file(str(tmp_path / "direction.safetensors"))["candidates"], want.float(),
                               atol=1e-5, rtol=1e-4)
    rows = {row["method"]: row for row in out["methods"]["rows"]}
    assert list(rows) == ["dim", "lda", "pca"]
    sel = out["selected"]
    assert rows["lda"]["abs_cos_with_reference"] == pytest.approx(1.0, abs=1e-6)
    for key in ("ablation_score", "induce_score", "kl_safe"):
        assert rows["lda"][key] == pytest.approx(sel[key], abs=1e-6)  # the same direction, scored the same way
    assert rows["dim"]["abs_cos_with_reference"] < 0.999
    saved = load_file(str(tmp_path / "direction.safetensors"))
    torch.testing.assert_close(saved["methods"][1], saved["direction"])  # the lda row is the selected direction
    dim = (residual_tails(ctx.model, ctx.formatter, tox, [1, 2], n, 3)[0].mean(0)
           - residual_tails(ctx.model, ctx.formatter, saf, [1, 2], n, 3)[0].mean(0))
    torch.testing.assert_close(saved["methods"][0], dim[[1, 2].index(sel["layer"]), sel["position"]].float(),
                               atol=1e-5, rtol=1e-4)
    assert Path(out["methods"]["plot"]).read_bytes()[:4] == b"\x89PNG"


def test_rdo_lowers_its_loss_keeps_the_length_and_leaves_outlier_dims_at_zero(ctx, texts):
    from refusal.evaluation.direction import Samples
    from refusal.evaluation.direction_methods import _rdo_loss, optimise

    d = ctx.model.config.hidden_size
    keep = torch.ones(1, d, dtype=torch.float64)
    keep[0, :5] = 0
    samples = Samples(texts["toxic"], texts["safe"], torch.zeros(4, 1, 2, d), torch.zeros(4, 1, 2, d), keep, [2])
    start = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * keep[0]
    s = direction_settings(rdo=dataclasses.replace(direction_settings().rdo, steps=15, lr=0.05, batch_size=4))
    r, history = optimise(ctx, start, 2, samples, s)
    assert len(history) == 15 and history[-1]["loss"] < history[0]["loss"]
    assert float(r.norm()) == pytest.approx(float(start.norm()), rel=1e-6)
    assert float(r[:5].abs().max()) == 0.0
    with torch.no_grad():
        final, _ = _rdo_loss(ctx, (r / r.norm()).float(), float(r.norm()), 2, texts["toxic"], texts["safe"], s)
    assert float(final) < history[0]["loss"]
    assert all(p.requires_grad is False for p in ctx.model.parameters())  # the model is left as it was


def test_method_rdo_refines_the_selected_candidate(ctx, texts, tmp_path):
    from safetensors.torch import load_file

    from refusal.evaluation.direction_stage import run_direction

    prompts = split_prompts(texts)
    run = dataclasses.replace(ctx, prompts=prompts.filter(split="test"), out_dir=tmp_path)
    s = direction_settings(method="rdo", candidate_layers=[1, 2], max_layer_fraction=1.0, max_kl=10.0,
                           induce_min_score=-100.0, rdo=dataclasses.replace(direction_settings().rdo, steps=3))
    out = run_direction(run, prompts, s, tmp_path, "test")
    saved = load_file(str(tmp_path / "direction.safetensors"))
    start = out["selection"]["rdo"]["start"]
    assert (out["selected"]["layer"], out["selected"]["position"]) == (start["layer"], start["position"])
    assert len(out["selection"]["rdo"]["history"]) == 3
    li = saved["candidate_layers"].tolist().index(start["layer"])
    cand = saved["candidates"][li, start["position"]]
    assert float(saved["direction"].norm()) == pytest.approx(float(cand.norm()), rel=1e-5)
    assert out["selection"]["rdo"]["cos_with_start"] < 1.0


@pytest.mark.parametrize("key,value,match", [
    ("method", "svd", r"evaluation.direction.method='svd' is not valid"),
    ("compare_methods", "[dim,foo]", r"compare_methods entry='foo' is not valid"),
    ("shrinkage", "2.0", r"shrinkage=2.0 is not valid; use auto"),
])
def test_bad_estimator_settings_are_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=["model=tiny_llama", "logger=csv",
                                                 f"evaluation.direction.{key}={value}"])
        settings_from(cfg.evaluation)


def test_the_direction_stage_exports_the_abliterated_model_and_measures_it(ctx, texts, tmp_path):
    from refusal.evaluation.direction_stage import run_direction

    prompts = split_prompts(texts)
    run = dataclasses.replace(ctx, prompts=prompts.filter(split="test"), out_dir=tmp_path)
    s = direction_settings(export=True, candidate_layers=[1, 2], max_layer_fraction=1.0, max_kl=10.0,
                           induce_min_score=-100.0)
    out = run_direction(run, prompts, s, tmp_path, "test")
    export = out["export"]
    assert Path(export["dir"]) == tmp_path / "abliterated" and (tmp_path / "abliterated" / "config.json").exists()
    assert export["hooks_match_weights"] and export["max_logit_diff_vs_hooks"] < 1e-4
    rows = {(r["condition"], r["label"]): r for r in out["rates"] if r["category"] == "all"}
    assert {("abliterated", lb) for lb in ("toxic", "safe")} <= set(rows)
    assert (tmp_path / "responses" / "direction_abliterated.jsonl").exists()


def test_compare_at_strongest_compares_where_ablation_lowers_refusal_most(ctx, texts, tmp_path):
    from safetensors.torch import load_file

    from refusal.evaluation.direction_stage import run_direction

    prompts = split_prompts(texts)
    run = dataclasses.replace(ctx, prompts=prompts.filter(split="test"), out_dir=tmp_path)
    s = direction_settings(compare_methods=("dim",), compare_at="strongest", candidate_layers=[1, 2],
                           max_layer_fraction=1.0, max_kl=0.0, induce_min_score=100.0)  # nothing passes
    out = run_direction(run, prompts, s, tmp_path, "test")
    strongest = min(out["selection"]["candidates"], key=lambda c: c["ablation_score"])
    assert (out["methods"]["layer"], out["methods"]["position"]) == (strongest["layer"], strongest["position"])
    assert out["methods"]["rows"][0]["ablation_score"] == pytest.approx(strongest["ablation_score"], abs=1e-6)
    # |cos| is taken with a direction at the same place: the selected one, or the selected estimator's candidate there
    sel = out["selected"]
    same = (sel["layer"], sel["position"]) == (strongest["layer"], strongest["position"])
    assert out["methods"]["reference"] == ("the selected direction" if same else "the dim candidate there")
    assert out["methods"]["rows"][0]["abs_cos_with_reference"] == pytest.approx(1.0, abs=1e-6)
    saved = load_file(str(tmp_path / "direction.safetensors"))
    li = saved["candidate_layers"].tolist().index(strongest["layer"])
    torch.testing.assert_close(saved["methods"][0], saved["candidates"][li, strongest["position"]])
