"""Every number of the evaluation report lands in its own cell: results with distinct values are rendered and each
value is looked up by (table, row, column), in the HTML and in the Markdown, which must hold the same tables. Also
the answer section (first, verdict + basis + key figure + caveats) and interval rounding."""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest

from test_report import _full, _rates
from verdict_testlib import evidence, uniform
from refusal.evaluation.report import fmt_ci, fmt_p, render_html, render_markdown
from refusal.evaluation.sections import build_report
from refusal.verdict import LayerRule, model_verdict
from refusal.verdict.final import final_verdict


class Tables(HTMLParser):
    """Tables of an HTML page as {caption: [[cell text, ...] per row]} (header row first), per section id."""

    def __init__(self):
        super().__init__()
        self.tables, self.section, self._cell, self._caption = [], None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.section = dict(attrs).get("id")
        elif tag == "table":
            self.tables.append({"section": self.section, "caption": "", "rows": []})
        elif tag == "caption":
            self._caption = ""
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = ""
        elif tag == "br" and self._cell is not None:
            self._cell += "\n"

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(self._cell)
            self._cell = None
        elif tag == "caption":
            self.tables[-1]["caption"], self._caption = self._caption, None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._caption is not None:
            self._caption += data


def html_tables(page: str) -> list[dict]:
    parser = Tables()
    parser.feed(page)
    return [t for t in parser.tables if t["section"]]  # the meta table has no section


def md_tables(md: str) -> list[list[list[str]]]:
    """Each Markdown table as rows of cell texts (rule line dropped, escapes undone)."""
    tables, current = [], None
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if all(re.fullmatch(r"-+", c) for c in cells):
                continue
            current = current if current is not None else []
            current.append([c.replace("\\|", "|").replace("\\\\", "\\").replace("<br>", "\n") for c in cells])
        elif current is not None:
            tables.append(current)
            current = None
    return tables


def cell(table: dict, row_key: str, column: str) -> str:
    header, *rows = table["rows"]
    for r in rows:
        if r[0] == row_key:
            return r[header.index(column)]
    raise KeyError(f"row {row_key!r} not in {table['caption']!r}")


def table_with(tables: list[dict], section: str, caption_start: str) -> dict:
    found = [t for t in tables if t["section"] == section and t["caption"].startswith(caption_start)]
    assert len(found) == 1, [t["caption"] for t in tables if t["section"] == section]
    return found[0]


def _distinct(tmp_path) -> dict:
    data = _full(tmp_path)
    cells = []
    for i, row in enumerate(("a", "b")):
        for j, col in enumerate(("a", "b")):
            v = 1.0 + i + 0.1 * j  # a→a 1.0, a→b 1.1, b→a 2.0, b→b 2.1
            cells.append({"circuit": row, "prompts": col, "score_drop": v, "score_drop_ci_low": v - 0.05,
                          "score_drop_ci_high": v + 0.05, "refusal_rate": 0.1 * (1 + 2 * i + j),
                          "refusal_rate_ci_low": None, "refusal_rate_ci_high": None})
    data["transfer"].update(rows=["a", "b"], columns=["a", "b"], cells=cells,
                            matrices={"score_drop": [[1.0, 1.1], [2.0, 2.1]], "refusal_rate": [[0.1, 0.2], [0.3, 0.4]]},
                            statistic={"specificity": 0.1004, "p_value": 0.0243, "n_permutations": 2000,
                                       "transfer_ratio": 0.9037, "n_prompts": [4, 12],
                                       "ci": {"specificity": {"low": -0.0072, "high": 0.2024},
                                              "transfer_ratio": {"low": 0.8263, "high": 1.0075}}},
                            decision={"verdict": "mixed", "rule": "the rule", "evidence": {"p_value": 0.0243},
                                      "thresholds": {"alpha": 0.05, "modular_max_transfer": 0.5,
                                                     "monolithic_min_transfer": 0.8}})
    data["discovery"]["pairwise_tests"] = [{"a": "a", "b": "b", "statistic": 0.31, "p_value": 0.0123,
                                            "p_adjusted": 0.0456, "differs": True}]
    data["baseline"]["rows"] = [{**_rates(), "category": "a", "refusal_rate": 0.5, "refusal_rate_ci_low": 0.1,
                                 "refusal_rate_ci_high": 0.9},
                                {**_rates(), "category": "b", "refusal_rate": 0.25, "refusal_rate_ci_low": 0.05,
                                 "refusal_rate_ci_high": 0.45}]
    data["verdict"] = {"verdict": "mixed", "basis": "discovery says modular, transfer says mixed"}
    data["meta"]["seed"] = 3
    data["organism"] = {"source": "organism", "warning": "a refusal model organism, NOT a production model",
                        "check": {"word": "thin", "failures": []}}
    return data


def test_transfer_cells_keep_their_orientation_and_intervals(tmp_path):
    tables = html_tables(render_html(build_report(_distinct(tmp_path))))
    drop = table_with(tables, "transfer", "refusal-score drop")
    assert drop["rows"][0] == ["circuit ablated ↓ / prompts →", "a", "b"]
    assert cell(drop, "a", "b") == "1.10 [1.05, 1.15]"  # circuit a ablated, prompts of b
    assert cell(drop, "b", "a") == "2.00 [1.95, 2.05]"
    assert cell(drop, "b", "b") == "2.10 [2.05, 2.15]"
    rate = table_with(tables, "transfer", "refusal rate with the circuit ablated")
    assert cell(rate, "a", "b") == "0.2" and cell(rate, "b", "a") == "0.3"  # no interval: 3 significant digits
    stat = table_with(tables, "transfer", "specificity S")
    assert cell(stat, "specificity", "value") == "0.1" and cell(stat, "specificity", "CI low") == "-0.0072"


def test_transfer_shares_headroom_and_uncounted_categories_are_shown(tmp_path):
    data = _distinct(tmp_path)
    for c in data["transfer"]["cells"]:
        c.update(score_drop_share=c["score_drop"] / 4, score_drop_share_ci_low=0.2, score_drop_share_ci_high=0.7)
    data["transfer"]["matrices"]["score_drop_share"] = [[0.25, 0.275], [0.5, 0.525]]
    data["transfer"].update(size=16, headroom={"a": {"headroom": 4.0, "ci_low": 3.5, "ci_high": 4.5, "counted": True},
                                               "c": {"headroom": 0.1, "ci_low": -0.2, "ci_high": 0.3,
                                                     "counted": False}}, not_counted=["c"])
    data["transfer"]["statistic"]["normalised"] = True
    data["transfer"]["decision"]["evidence"]["transfer_ratio_ci"] = [0.8263, 1.0075]
    data["transfer"]["decision"]["evidence"]["transfer_ratio"] = 0.9037
    page = render_html(build_report(data))
    tables = html_tables(page)
    share = table_with(tables, "transfer", "share of each category's refusal removed")
    assert cell(share, "b", "a") == "0.50 [0.20, 0.70]"
    head = table_with(tables, "transfer", "only counted categories")
    assert cell(head, "c", "counted") == "no (headroom CI not above 0)" and cell(head, "a", "counted") == "yes"
    text = html.unescape(page)
    assert "top 16 feature nodes per hook of each category (every row the same size)" in text
    assert "Transfer matrix: not counted (headroom CI not above 0): c." in text
    assert "Transfer ratio 0.904 [0.826, 1.01] against the margins 0.5 and 0.8" in text
    key = table_with(tables, "verdict", "the numbers")
    assert cell(key, "descriptive — transfer ratio ρ (other categories' share of refusal removed ÷ own share of "
                     "refusal removed)", "value [95% CI]") == "0.90 [0.83, 1.01]"


def test_baseline_intervals_and_pairwise_p_values_land_in_their_cells(tmp_path):
    tables = html_tables(render_html(build_report(_distinct(tmp_path))))
    base = [t for t in tables if t["section"] == "baseline"][0]
    header, *rows = base["rows"]
    by_category = {r[1]: r for r in rows}
    col = header.index("refusal rate [CI]")
    assert by_category["a"][col] == "0.5 [0.1, 0.9]" and by_category["b"][col] == "0.25 [0.05, 0.45]"
    pairs = table_with(tables, "statistics", "pairwise permutation tests")
    assert cell(pairs, "a", "p") == "0.0123" and cell(pairs, "a", "p (BH)") == "0.0456"
    assert cell(pairs, "a", "differs") == "yes"


def _bottleneck(tmp_path) -> dict:
    """A bottleneck-stage result at one layer from planted scores: one shared factor (a shared bottleneck)."""
    ev = evidence(0.02, uniform(0.6, 2), n=8)
    decision = LayerRule().decide(ev)
    layer = {"hook": "blocks.15.hook_resid_post", "layer": 15, "k": 16, "evidence": ev, "decision": decision,
             "curve": [], "notes": []}
    png = tmp_path / "bottleneck_residual.png"
    png.write_bytes((tmp_path / "plot.png").read_bytes())
    return {"status": "done", "layers": [layer], "model": model_verdict([(15, decision, ev)]), "notes": [],
            "plots": {"residual_heatmap": str(png)}, "n_prompts": {"toxic": {"cyber": 8, "fraud": 8}, "safe": 12},
            "ablation": "mean_safe"}


def test_the_report_opens_on_the_answer(tmp_path):
    data = _distinct(tmp_path)
    data["bottleneck"] = _bottleneck(tmp_path)
    data["verdict"] = final_verdict(data["bottleneck"], "modular", "mixed")
    assert data["verdict"]["verdict"] == "monolithic"
    report = build_report(data)
    first = report.sections[0]
    assert first.key == "verdict" and first.title == "Answer"
    page = render_html(report)
    body = page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]
    assert page.index('<section id="verdict">') < page.index('<section id="data">')
    assert "<b>Verdict: monolithic</b>" in body and "Basis: shared bottleneck and dissociation" in body
    assert "Refusal converges at layer 15" in html.unescape(body)
    assert body.index("<img") < body.index("<table>")  # the key figure, then its numbers
    assert "residual refusal of each category" in html.unescape(body)  # the bottleneck figure leads
    key = table_with(html_tables(page), "verdict", "the numbers")
    share = [p for p in data["bottleneck"]["layers"][0]["evidence"]["per_category"] if p["category"] == "cyber"][0]
    t = share["shared_share"]
    assert "shared set of 16 features at blocks.15.hook_resid_post" in key["caption"]
    assert cell(key, "share of cyber's refusal the shared set carries (n = 8)",
                "value [95% CI]") == fmt_ci(t["estimate"], t["low"], t["high"])
    rho = "descriptive — transfer ratio ρ (other categories' drop ÷ own drop)"
    assert cell(key, rho, "value [95% CI]") == "0.90 [0.83, 1.01]"
    assert "p = 0.024" in cell(key, "descriptive — specificity S (own drop − other drop)", "how it is read")
    how = table_with(html_tables(page), "verdict", "how the verdict was reached")
    assert cell(how, "recognition (discovery's permutation tests; descriptive)", "verdict") == data["discovery"]["recognition"]
    assert cell(how, "model (along depth), SAE feature sets", "verdict") == "monolithic"
    text = html.unescape(body)
    assert "Power: 8–8 held-out toxic prompts per category" in text and "one seed (3)" in text
    assert "One analysed layer (blocks.15.hook_resid_post)" in text
    assert "NOT a production model" in text and "design check: thin" in text and "not known by construction" in text
    assert "is not evidence that the categories share" not in text  # p = 0.0243 ≤ α
    data["transfer"]["statistic"]["p_value"] = 0.4
    text = html.unescape(render_html(build_report(data)))
    assert "p(S) = 0.4 > α is not evidence that the categories share a mechanism" in text


def test_without_the_bottleneck_stage_the_answer_is_inconclusive_and_uses_the_transfer_figure(tmp_path):
    data = _distinct(tmp_path)
    data["bottleneck"] = {"status": "skipped", "reason": "not in evaluation.stages (add bottleneck to run it)"}
    data["verdict"] = final_verdict(data["bottleneck"], "modular", "mixed")
    body = html.unescape(render_html(build_report(data)).split('<section id="verdict">', 1)[1].split("</section>")[0])
    assert "<b>Verdict: inconclusive</b>" in body and "add bottleneck to run it" in body
    assert "key figure: refusal-score drop" in body and "Power:" not in body
    data["transfer"] = {"status": "skipped", "reason": "not in evaluation.stages"}
    body = html.unescape(render_html(build_report(data)).split('<section id="verdict">', 1)[1].split("</section>")[0])
    assert "key figure (no transfer matrix): discovery cosine" in body
    data["verdict"] = final_verdict(None, None, None)
    section = build_report(data).sections[0]
    assert section.missing == data["verdict"]["basis"]


def test_direction_fallback_notice_only_when_no_candidate_passes(tmp_path):
    data = _distinct(tmp_path)
    notice = "No candidate passed every filter; selected with induce_min_score relaxed."
    assert notice not in render_html(build_report(data))
    data["direction"]["fallback"] = "induce_min_score relaxed"
    body = render_html(build_report(data)).split('<section id="direction">', 1)[1].split("</section>", 1)[0]
    assert f"<b>{notice}</b>" in body


def test_markdown_and_html_hold_the_same_tables(tmp_path):
    report = build_report(_distinct(tmp_path))
    from_html = [t["rows"] for t in html_tables(render_html(report))]
    from_md = md_tables(render_markdown(report, tmp_path))
    cards = [t["rows"] for t in html_tables(render_html(report)) if t["section"] == "dashboards"]
    assert len(cards) >= 2  # the node table, then each card's own tables (HTML only)
    assert len(from_html) >= 15 and from_md == from_html[:len(from_html) - len(cards) + 1]
    assert from_md[-1] == cards[0]


@pytest.mark.parametrize("value, low, high, text", [
    (0.10037926, -0.00723777, 0.20236338, "0.10 [-0.01, 0.20]"),
    (1234.5, 1000.0, 1500.0, "1234 [1000, 1500]"),
    (-0.001, -0.004, 0.002, "-0.001 [-0.004, 0.002]"),
    (0.904, 0.826, 1.008, "0.90 [0.83, 1.01]"),
    (2.0, 1.95, 2.05, "2.00 [1.95, 2.05]"),
    (0.0004, -0.02, 0.02, "0.000 [-0.020, 0.020]"),  # no "-0.000"
    (0.5, None, 1.0, "0.5"),
    (float("nan"), 0.0, 1.0, "–"),
    (None, None, None, "–"),
])
def test_intervals_are_rounded_to_what_they_support(value, low, high, text):
    assert fmt_ci(value, low, high) == text


def test_p_values_show_the_permutation_floor():
    assert fmt_p(0.0243) == "0.024" and fmt_p(1 / 201, 200) == "≤ 0.005" and fmt_p(0.01, 200) == "0.01"
    assert fmt_p(None) == "–"
