"""The patching and ablation-curve report sections: built from real (tiny) results and rendered to Markdown and HTML;
absent, missing and skipped results give missing sections."""
from __future__ import annotations

import dataclasses

import pytest

from refusal.behavior.judge import REFUSAL_SUBSTRINGS, SubstringJudge
from refusal.behavior.rates import Bootstrap
from refusal.behavior.score import resolve_refusal_tokens
from refusal.data import PromptSet
from refusal.data.records import PromptRecord
from refusal.evaluation.ablation_curve import AblationCurveSettings, run_ablation_curve
from refusal.evaluation.context import EvalContext
from refusal.evaluation.patching import PatchingSettings, run_patching
from refusal.evaluation.patching_section import ablation_curve_section, patching_section
from refusal.evaluation.report import Image, Report, Table, render_html, render_markdown
from refusal.model.chat import ChatFormatter
from refusal.utils.io import json_safe


@pytest.fixture(scope="module")
def results(loaded, texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("patching")
    cats = ["cyber", "fraud", "cyber", "fraud"]
    prompts = PromptSet([PromptRecord(f"{sp}-{lb}-{i}", f"{t} ({sp})", cats[i] if lb == "toxic" else "benign", lb,
                                      "test", sp) for sp in ("train", "test") for lb in ("toxic", "safe")
                         for i, t in enumerate(texts[lb])])
    ctx = EvalContext(loaded, ChatFormatter(loaded.tokenizer), prompts.filter(split="test"),
                      SubstringJudge(REFUSAL_SUBSTRINGS), resolve_refusal_tokens(loaded.tokenizer), 4, 2,
                      Bootstrap(50, 0.95, "percentile"), 0, out)
    patching = run_patching(ctx, prompts, dataclasses.replace(PatchingSettings(), layers=[1, 2]), out)
    curve = run_ablation_curve(ctx, prompts, dataclasses.replace(AblationCurveSettings(), n_random=2,
                                                                 generate_ks=(1,)), out, patching)
    return json_safe(patching), json_safe(curve), out


def test_the_sections_render_with_their_tables_and_figures(results):
    patching, curve, out = results
    p, a = patching_section(patching), ablation_curve_section(curve)
    assert p.missing is None and a.missing is None
    assert sum(isinstance(b, Image) for b in p.blocks) == 5 and sum(isinstance(b, Image) for b in a.blocks) == 1
    top = [b for b in p.blocks if isinstance(b, Table) and "largest pooled effect" in b.caption]
    assert len(top) == 2 and top[0].columns == ["component", "all", "cyber", "fraud"] and len(top[0].rows) == 10
    ks = next(b for b in a.blocks if isinstance(b, Table) and b.columns[0] == "k")
    assert [row[0] for row in ks.rows] == curve["ks"]
    report = Report("t", [p, a])
    md, page = render_markdown(report, out), render_html(report)
    assert "Activation patching" in md and "Ablation curves" in page and "top1" in md


@pytest.mark.parametrize("result,missing,not_run", [
    (None, "did not run", False), ({}, "did not run", False),
    ({"status": "missing", "reason": "no model"}, "no model", False),
    ({"status": "skipped", "reason": "not in evaluation.stages"}, "not in evaluation.stages", True)])
def test_absent_results_give_missing_sections(result, missing, not_run):
    for build in (patching_section, ablation_curve_section):
        section = build(result)
        assert missing in section.missing and section.not_run is not_run and not section.blocks
