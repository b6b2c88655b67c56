"""The feature dashboards' report section and W&B tables (refusal/evaluation/dashboard_section.py)."""
from __future__ import annotations

import copy

import pytest

from refusal.evaluation.dashboard_section import (dashboard_anchor, dashboard_tables, dashboards_section,
                                                  log_dashboards)
from refusal.evaluation.report import Html, Report, Table, render_html, render_markdown

H = "blocks.1.hook_resid_post"
EVIL = "<script>alert(1)</script>"


def _dashboards() -> dict:
    node = {"key": "blocks-1-hook_resid_post-7", "hook": H, "layer": 1, "feature": 7,
            "activation": {"n_tokens": 40, "frequency": 0.25, "mean": 0.5},
            "by_group": [{"category": "cyber", "label": "toxic", "n_tokens": 40, "frequency": 0.25, "mean": 0.5}],
            "top_examples": [{"prompt_id": "p<1>", "category": "cyber", "label": "toxic", "split": "train",
                              "activation": 3.5, "token_index": 2}],
            "attribution": {"toxic": {"cyber": 0.125, "fraud": None}},
            "logits": {"promoted": [{"token": " no", "token_id": 5, "value": 2.0}],
                       "suppressed": [{"token": "<b>", "token_id": 6, "value": -1.0}]}}
    return {"version": 1, "n_tokens": 40, "source": {"kind": "store"}, "nodes": {node["key"]: node},
            "prompts": {"p<1>": {"tokens": ["Say", " ", EVIL, " now", "\n"]}},
            "error_nodes": [{"hook": H, "circuits": ["toxic/cyber"], "reason": "no dashboard"}]}


def test_anchor_is_the_sanitized_node_key():
    assert dashboard_anchor(H, 7) == "dash-blocks-1-hook_resid_post-7"
    assert dashboard_anchor("blocks.3.mlp.hook_post", 12) == "dash-blocks-3-mlp-hook_post-12"


def test_card_has_the_anchor_highlights_the_max_token_and_escapes_prompts():
    section = dashboards_section(_dashboards())
    assert section.missing is None
    page = render_html(Report("r", [section]))
    assert 'id="dash-blocks-1-hook_resid_post-7"' in page
    assert "<script>alert" not in page
    assert "<mark>&lt;script&gt;alert(1)&lt;/script&gt;</mark>" in page  # the max token (index 2), escaped
    assert "p&lt;1&gt;" in page and "&lt;b&gt;" in page  # prompt id and token texts escaped too
    md = render_markdown(Report("r", [section]), ".")
    assert "report.html" in md and "<script>" not in md.replace("\\", "")


def test_node_table_has_attribution_per_circuit_and_the_error_note():
    section = dashboards_section(_dashboards())
    table = next(b for b in section.blocks if isinstance(b, Table))
    assert table.columns[-2:] == ["toxic/cyber", "toxic/fraud"]
    assert table.rows[0][:3] == ["blocks-1-hook_resid_post-7", H, 7] and table.rows[0][-2:] == [0.125, None]
    assert any("error node" in getattr(b, "text", "") for b in section.blocks)
    assert sum(isinstance(b, Html) for b in section.blocks) == 1


@pytest.mark.parametrize("value,reason", [(None, "no dashboards.json"),
                                          ({"status": "missing", "reason": "gone"}, "gone")])
def test_missing_input_gives_a_missing_section(value, reason):
    section = dashboards_section(value)
    assert section.missing and reason in section.missing and not section.blocks
    assert "Missing" in render_html(Report("r", [section]))


def test_same_input_same_page():
    a, b = (render_html(Report("r", [dashboards_section(_dashboards())])) for _ in range(2))
    assert a == b


def test_example_without_a_token_position_and_never_active_node_render():
    d = _dashboards()
    node = d["nodes"]["blocks-1-hook_resid_post-7"]
    node["top_examples"][0]["token_index"] = None  # a store of prompt means
    page = render_html(Report("r", [dashboards_section(d)]))
    assert "<mark>" not in page
    node["top_examples"] = []
    assert "never active" in render_html(Report("r", [dashboards_section(d)]))


def test_tables_and_wandb_logging():
    tables = dashboard_tables(_dashboards())
    cols, rows = tables["examples"]
    assert rows[0][cols.index("token")] == EVIL and "[[" + EVIL + "]]" in rows[0][cols.index("context")]
    assert "⏎" in rows[0][cols.index("context")]
    assert [r[1:3] for r in tables["logits"][1]] == [["promoted", 1], ["suppressed", 1]]

    class Run:
        logged: list = []

        def log(self, payload):
            self.logged.append(payload)

    run = Run()
    log_dashboards(None, _dashboards())
    log_dashboards(run, None)
    assert run.logged == []
    log_dashboards(run, copy.deepcopy(_dashboards()))
    assert sorted(run.logged[0]) == [f"discover/dashboards/{k}" for k in ("by_group", "examples", "logits", "nodes")]
