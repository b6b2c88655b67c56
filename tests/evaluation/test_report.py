"""The report renderer: tables render correctly whatever their cells hold (Markdown and HTML), images are embedded
in the HTML and linked from the Markdown, missing sections say why; the evaluation report renders for a full set
of results with None/NaN values and for a train-only run with the other sections marked missing; W&B logging."""
from __future__ import annotations

import base64
import math
import re
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from refusal.circuit.graph import write_graph  # noqa: E402
from refusal.evaluation.sections import SECTIONS, build_report  # noqa: E402
from refusal.evaluation.report import (Image, Report, Section, Table, Text, log_report, render_html,  # noqa: E402
                                     render_markdown, write_report)

LOCALISATION = ("patching", "ablation_curve", "eap", "lens", "probes")
NASTY = ["a|b", "line one\nline two", "<script>alert(1)</script>", None, math.nan, True, 1.23456789, [1, 2.5], "x\\|y"]


class Cells(HTMLParser):
    """Counts <td>/<th> per <tr> and collects text outside tags."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append(0)
        elif tag in ("td", "th") and self.rows:
            self.rows[-1] += 1


def _png(path):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _report(tmp_path) -> Report:
    table = Table([f"c{i}" for i in range(len(NASTY))], [NASTY, list(reversed(NASTY))], caption="a | caption")
    return Report("Title <&>", [Section("one", "First", [Text("hello <b>"), table, Image(_png(tmp_path / "p.png"), "pic")]),
                                Section("two", "Second", missing="the stage did not run | at all")],
                  meta={"model": "tiny"})


def test_markdown_tables_keep_their_shape(tmp_path):
    md = render_markdown(_report(tmp_path), tmp_path)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 4  # header, rule, two rows
    counts = {len(re.findall(r"(?<!\\)\|", line)) for line in rows}
    assert counts == {len(NASTY) + 1}
    assert "line one<br>line two" in md and "1.23" in md and "–" in md and "yes" in md
    assert "![pic](p.png)" in md
    assert "> **Missing:** the stage did not run | at all" in md


def test_html_tables_are_escaped_and_well_formed(tmp_path):
    page = render_html(_report(tmp_path))
    parser = Cells()
    parser.feed(page)
    assert "script" not in parser.tags and "&lt;script&gt;" in page
    table_rows = [n for n in parser.rows if n == len(NASTY)]
    assert len(table_rows) == 3  # header + two rows, every one with all its cells
    assert '<section id="one">' in page and '<section id="two">' in page
    assert "Missing:</b> the stage did not run | at all" in page
    data = base64.b64encode((tmp_path / "p.png").read_bytes()).decode()
    assert f"data:image/png;base64,{data}" in page


def test_table_rows_must_match_columns():
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        Table(["a", "b"], [[1]])


def test_missing_image_is_reported_not_crashed(tmp_path):
    page = render_html(Report("t", [Section("s", "S", [Image(tmp_path / "nope.png", "gone")])]))
    assert "was not found" in page


def test_write_report_writes_both(tmp_path):
    md, page = write_report(_report(tmp_path), tmp_path / "out" / "report.md", tmp_path / "out" / "report.html")
    assert md.read_text().startswith("# Title <&>") and page.read_text().startswith("<!DOCTYPE html>")
    assert "](../p.png)" in md.read_text()


def _rates(cond=None):
    row = {"label": "toxic", "category": "all", "n": 4, "n_refused": 2, "refusal_rate": 0.5, "refusal_rate_ci_low": 0.1,
           "refusal_rate_ci_high": 0.9, "refusal_score_mean": 0.3, "refusal_score_ci_low": None,
           "refusal_score_ci_high": None}
    return {**row, "condition": cond} if cond else row


def _circuit(category: str, nodes: list[tuple]) -> dict:
    """A toxic circuit file's content: nodes (hook, feature, attribution), edges from the first node to the rest."""
    ids = [f"{h}/{f}" for h, f, _ in nodes]
    return {"category": category, "kind": "toxic", "manifest": {"model": "tiny"},
            "nodes": [{"id": i, "hook": h, "layer": int(h.split(".")[1]), "feature": f, "position": None,
                       "attribution": a} for i, (h, f, a) in zip(ids, nodes)],
            "edges": [{"source": ids[0], "target": t, "weight": 0.5} for t in ids[1:]]}


def _full(tmp_path) -> dict:
    png = str(_png(tmp_path / "plot.png"))
    point = {"n_nodes": 3, "faithfulness": 0.8, "completeness": None, "random": {
        "faithfulness": {"mean": 0.1, "min": 0.0, "max": 0.2}, "completeness": {"mean": None, "min": None, "max": None}}}
    cell = {"circuit": "a", "prompts": "a", "score_drop": 1.0, "score_drop_ci_low": 0.5, "score_drop_ci_high": 1.5,
            "refusal_rate": 0.2, "refusal_rate_ci_low": 0.0, "refusal_rate_ci_high": 0.5}
    discover = tmp_path / "discover"
    write_graph(discover, [_circuit("a", [("blocks.1.hook_resid_post", 3, 0.9), ("blocks.2.hook_resid_post", 7, 0.4)]),
                           _circuit("b", [("blocks.1.hook_resid_post", 3, 0.5)])])
    return {
        "meta": {"model": "tiny"},
        "discover_dir": str(discover),
        "dashboards": {"version": 1, "n_tokens": 4, "source": {"kind": "store"}, "prompts": {}, "error_nodes": [],
                       "nodes": {"blocks-1-hook_resid_post-3": {
                           "key": "blocks-1-hook_resid_post-3", "hook": "blocks.1.hook_resid_post", "layer": 1,
                           "feature": 3, "activation": {"n_tokens": 4, "frequency": 0.5, "mean": 0.25}, "by_group": [],
                           "top_examples": [], "attribution": {"toxic": {"a": 0.9, "b": 0.5}},
                           "logits": {"promoted": [], "suppressed": []}}}},
        "data_analysis": {"counts": [{"category": "a", "label": "toxic", "split": "test", "n": 2}], "warnings": ["thin"]},
        "train_manifest": {"hooks": ["h"], "metrics": {"val/h/explained_variance": 0.7}},
        "discovery": {"circuits": [{"category": "a", "kind": "toxic", "n_nodes": 3, "n_edges": 1}],
                      "heatmaps": {"cosine": png}, "similarity": {"n_equalised": 3, "mean_offdiagonal": {"cosine": None}},
                      "global_test": {"statistic": 0.4, "p_value": 0.01}, "pairwise_tests": [],
                      "shared_core": {"core_mass": {"a": 0.5}}, "recognition": "mixed", "evidence": {"global_p": 0.01},
                      "rule": "r"},
        "baseline": {"status": "done", "rows": [_rates()], "split": "test"},
        "sae_quality": {"status": "done", "rows": [{"hook": "h", "n_prompts": 2, "explained_variance": math.nan,
                                                    "l0": 3.0, "ce_orig": 1.0, "ce_sae": 1.1, "ce_zero": 2.0,
                                                    "ce_loss_recovered": 0.9}]},
        "faithfulness": {"status": "done", "plot": png, "curves": {"a": {"points": [point], "discovered": point}},
                         "skipped": {"b": "no prompts"}},
        "transfer": {"status": "done", "rows": ["a"], "columns": ["a"], "cells": [cell], "plots": {"score_drop": png},
                     "matrices": {"score_drop": [[1.0]], "refusal_rate": [[0.2]]},
                     "statistic": {"specificity": 0.5, "p_value": 0.02, "ci": {"specificity": {"low": 0.1, "high": 0.9}}},
                     "decision": {"verdict": "modular", "rule": "r", "evidence": {"p_value": 0.02}}},
        "direction": {"status": "done", "selected": {"layer": 1, "position": -1, "ablation_score": -2.0,
                                                     "kl_safe": 0.01, "induce_score": 0.5},
                      "filters_passed": True, "n_candidates": 4, "kl_safe": {"mean": 0.02},
                      "rates": [_rates("baseline"), _rates("ablation"), _rates("actadd")], "plot": png,
                      "per_category": {"categories": ["a"], "cosine_with_selected": [0.9]}},
        "cast": {"status": "done", "condition_layer": 1, "behaviour_layer": 1, "coeff": 1.0, "estimator": "dim",
                 "threshold_split": "val", "plot": png,
                 "conditions": {"a": {"threshold": 0.2, "val_balanced_accuracy": 0.9, "n_val_positive": 3}},
                 "rates": [_rates("baseline"), _rates("always"), _rates("cast:a"), _rates("cast:any")],
                 "firing": [{"condition": "a", "label": "toxic", "category": "a", "n": 2, "fire_rate": 0.5}]},
        "neurons": {"status": "done", "layer": 1, "position": -1, "total": 2.0, "embedding": 0.1, "attention_total": 0.4,
                    "mlp_total": 1.5, "closure": 0.0, "top_k_share": {1: 0.2, 10: 0.6},
                    "top": [{"layer": 0, "neuron": 7, "part": 0.4, "share": 0.2, "cos_write": 0.3}],
                    "sae_decoders": {"h": {"shares": {1: 0.1}, "top": []}},
                    "rates": [_rates("baseline"), _rates("neurons_ablate")]},
        "verdict": {"verdict": "inconclusive", "basis": "no layer-resolved evidence: the bottleneck stage did not run"},
    }


def test_full_report_has_every_section(tmp_path):
    report = build_report(_full(tmp_path))
    assert [s.key for s in report.sections] == [k for k, _ in SECTIONS]
    # the bottleneck and localisation stages' sections render from real results in their own tests
    # (test_report_cells.py, test_evaluate_entry.py, test_patching_section.py, test_lens_section.py); here they have none
    assert [s.key for s in report.sections if s.missing] == ["bottleneck", *LOCALISATION]
    page = render_html(report)
    for key, title in SECTIONS:
        if key in LOCALISATION or key == "bottleneck":
            continue
        body = page.split(f'<section id="{key}">', 1)[1].split("</section>", 1)[0]
        assert title in body and "Missing:" not in body
    assert "Verdict: inconclusive" in page
    render_markdown(report, tmp_path)


def test_train_only_report_marks_the_rest_missing(tmp_path):
    data = _full(tmp_path)
    partial = {k: data[k] for k in ("meta", "data_analysis", "train_manifest")}
    partial.update({"baseline": {"status": "skipped", "reason": "not in evaluation.stages"},
                    "transfer": {"status": "missing", "reason": "no discover run"}})
    report = build_report(partial)
    missing = {s.key: s.missing for s in report.sections if s.missing}
    assert set(missing) == {"baseline", "circuits", "circuit_graph", "statistics", "faithfulness", "transfer",
                            "direction", "cast", "neurons", "verdict", "dashboards", "bottleneck", *LOCALISATION}
    assert missing["transfer"] == "no discover run" and missing["baseline"] == "not in evaluation.stages"
    assert [s.key for s in report.sections if s.not_run] == ["baseline"]  # not asked for, rather than missing
    page = render_html(report)
    assert page.count('class="missing"') == len(missing) - 1 and page.count('class="not-run"') == 1
    baseline = page.split('<section id="baseline">', 1)[1].split("</section>", 1)[0]
    assert "Not run:</b> not in evaluation.stages" in baseline and "Missing:" not in baseline
    assert "> **Not run:** not in evaluation.stages" in render_markdown(report, tmp_path)


def test_log_report_logs_html_tables_and_images(tmp_path):
    wandb = pytest.importorskip("wandb")
    report = _report(tmp_path)
    _, page = write_report(report, tmp_path / "report.md", tmp_path / "report.html")

    class Run:
        def log(self, payload):
            self.payload = payload
    run = Run()
    log_report(run, report, page)
    assert isinstance(run.payload["report/html"], wandb.Html)
    assert isinstance(run.payload["report/one/1"], wandb.Table) and isinstance(run.payload["report/one/2"], wandb.Image)
    log_report(None, report, page)  # no run: nothing to do


def test_the_direction_section_shows_the_estimator_comparison_and_the_export(tmp_path):
    data = _full(tmp_path)
    png = data["direction"]["plot"]
    data["direction"].update(
        method="lda", rates=data["direction"]["rates"] + [_rates("abliterated")],
        methods={"layer": 1, "position": -1, "at": "strongest", "reference": "the lda candidate there", "plot": png,
                 "rows": [
            {"method": "pca", "ablation_score": -1.5, "induce_score": 0.2, "kl_safe": 0.03, "passes": True,
             "abs_cos_with_reference": 0.77}]},
        export={"dir": "/runs/x/abliterated", "n_edited_tensors": 61, "max_logit_diff_vs_hooks": 3e-6,
                "hooks_match_weights": True, "load": "model=hf model.path=/runs/x/abliterated"})
    page = render_html(build_report(data))
    body = page.split('<section id="direction">', 1)[1].split("</section>", 1)[0]
    assert "estimator: lda" in body and "estimators compared at layer 1" in body and "0.77" in body
    assert "(the strongest candidate&#x27;s; selection prompts); reference: the lda candidate there" in body
    assert "abliterated rate [CI]" in body and "model=hf model.path=/runs/x/abliterated" in body


def test_the_direction_section_gives_the_held_out_kl_on_every_safe_prompt_and_on_the_answered_ones(tmp_path):
    data = _full(tmp_path)
    data["direction"].update(kl_safe={"mean": 0.202, "ci_low": 0.1, "ci_high": 0.3, "n": 37},
                             kl_safe_answered={"mean": 0.114, "ci_low": 0.05, "ci_high": 0.2, "n": 36})
    body = render_html(build_report(data)).split('<section id="direction">', 1)[1].split("</section>", 1)[0]
    assert "held-out safe prompts: 0.20 [0.10, 0.30] (n = 37)" in body
    assert "the model answers unintervened: 0.11 [0.05, 0.20] (n = 36)" in body
    del data["direction"]["kl_safe_answered"]  # a direction.json written before the answered KL existed
    body = render_html(build_report(data)).split('<section id="direction">', 1)[1].split("</section>", 1)[0]
    assert "held-out safe prompts: 0.20" in body and "answers unintervened" not in body
