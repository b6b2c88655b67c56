"""The evaluation report in a real headless Chromium (Playwright driving the system Chromium; skips, saying why,
where it cannot be installed, see browser_install.py): the report of a run, rendered by build_report from
realistic results (test_report._full) with the circuit graph below,
loads with no console error, page error or network request; every section, image and the graph's SVG is laid
out with a non-empty box and every image decodes; hovering a node shows its tooltip with the dashboard link; the
category filter and the |weight| slider hide nodes and links; the screenshot helper writes the first screen as a
1280x900 PNG."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from browser_install import require_browser
from test_report import _full

from refusal.circuit.graph import write_graph
from refusal.evaluation.dashboard_section import dashboard_anchor
from refusal.evaluation.report import write_report
from refusal.evaluation.screenshot import launch
from refusal.evaluation.sections import build_report

REPO = Path(__file__).resolve().parents[2]
H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"
GRAPH = "#circuit_graph"


def _circuit(category: str, nodes: list[tuple], edges: list[tuple], kind: str = "toxic") -> dict:
    return {"category": category, "kind": kind, "manifest": {"model": "tiny-llama"},
            "nodes": [{"id": f"{h}/{f}", "hook": h, "layer": int(h.split(".")[1]), "feature": f, "position": None,
                       "attribution": a} for h, f, a in nodes],
            "edges": [{"source": s, "target": t, "weight": w} for s, t, w in edges]}


def _circuits() -> list[dict]:
    shared = (f"{H1}/3", f"{H2}/7", 0.5)
    return [_circuit("cyber", [(H1, 3, 0.9), (H2, 7, 0.4), (H2, 11, -0.2), (H1, "error", 0.3)],
                     [shared, (f"{H1}/3", f"{H2}/11", -0.25), (f"{H1}/error", f"{H2}/7", 0.1)]),
            _circuit("fraud", [(H1, 3, 0.5), (H2, 7, 0.6), (H1, 5, 0.12)], [shared, (f"{H1}/5", f"{H2}/7", 0.05)]),
            _circuit("violence", [(H1, 3, 0.7), (H2, 7, 0.1)], [(f"{H1}/3", f"{H2}/7", 0.9)]),
            _circuit("all", [(H1, 3, 1.0)], [])]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    data = _full(tmp)  # its own small graph in tmp/discover, replaced here by the graph these tests read
    write_graph(Path(data["discover_dir"]), _circuits())
    report = build_report(data)
    assert next(s for s in report.sections if s.key == "circuit_graph").missing is None
    assert [s.key for s in report.sections if s.missing is None and s.key == "dashboards"]  # feature 3's card only
    _, page = write_report(report, tmp / "report.md", tmp / "report.html")
    return page


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, report_html):
    """The report loaded at 1280x900; ``page.problems`` collects console errors, page errors and requests."""
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("request", lambda r: problems.append(f"request: {r.url}")
          if not r.url.startswith(("file:", "data:")) else None)
    pg.goto(report_html.resolve().as_uri(), wait_until="load")
    pg.problems = problems
    yield pg
    assert problems == []
    pg.close()


def _visible(page, selector: str) -> int:
    return page.evaluate("s => Array.from(document.querySelectorAll(s)).filter(e => "
                         "getComputedStyle(e).display !== 'none').length", selector)


def test_report_loads_cleanly_and_everything_is_laid_out(page):
    boxes = page.evaluate("""() => Array.from(document.querySelectorAll('section, img, svg')).map(e => {
        const r = e.getBoundingClientRect();
        return {tag: e.tagName.toLowerCase(), id: e.id, w: r.width, h: r.height,
                natural: e.tagName === 'IMG' ? e.naturalWidth : null, done: e.tagName === 'IMG' ? e.complete : null};
    })""")
    sections = [b for b in boxes if b["tag"] == "section"]
    images = [b for b in boxes if b["tag"] == "img"]
    svgs = [b for b in boxes if b["tag"] == "svg"]
    assert len(sections) >= 13 and {"circuit_graph", "verdict", "dashboards"} <= {b["id"] for b in sections}
    assert len(images) >= 5 and len(svgs) == 1
    for b in boxes:
        assert b["w"] > 0 and b["h"] > 0, b
    for b in images:
        assert b["done"] and b["natural"] > 0, b
    assert page.problems == []


def test_hovering_a_node_shows_its_tooltip(page):
    tip = page.locator(f"{GRAPH} .rc-tip")
    assert tip.is_hidden()
    page.hover(f'{GRAPH} [aria-label="{H1}/3"]')
    tip.wait_for(state="visible", timeout=2000)
    text = tip.inner_text()
    assert f"{H1}/3" in text and "categories: cyber, fraud, violence" in text and "shared by every category" in text
    assert "0.9000" in text and "0.5000" in text and "0.7000" in text
    assert tip.locator("a").get_attribute("href") == f"#{dashboard_anchor(H1, 3)}"
    page.hover(f'{GRAPH} [aria-label="{H2}/11"]')  # no card for this feature on the page: no dead link
    page.wait_for_function("() => document.querySelector('#circuit_graph .rc-tip').innerText.includes('/11')")
    assert "no dashboard card" in tip.inner_text() and tip.locator("a").count() == 0
    page.mouse.move(1, 1)
    tip.wait_for(state="hidden", timeout=3000)


def test_threshold_slider_and_category_filter_hide_links_and_nodes(page):
    # 6 edges and 9 node -> metric links (one per node of each category's circuit); 5 nodes and the metric
    links, nodes = f"{GRAPH} .rc-link", f"{GRAPH} .rc-node"
    assert _visible(page, links) == 15 and _visible(page, nodes) == 6
    slider = page.locator(f"{GRAPH} input[type=range]")
    slider.focus()
    page.keyboard.press("End")  # the slider moved to the largest |weight| (0.9): an edge and an attribution
    assert _visible(page, links) == 2 and "2 of 15 links shown" in page.locator(f"{GRAPH} .rc-count").inner_text()
    page.keyboard.press("Home")
    assert _visible(page, links) == 15
    box = slider.bounding_box()  # drag it to the middle: |weight| >= 0.45
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert _visible(page, links) == 7
    page.keyboard.press("Home")
    page.select_option(f"{GRAPH} select", "fraud")
    assert _visible(page, nodes) == 4 and _visible(page, links) == 5
    page.select_option(f"{GRAPH} select", "")
    assert _visible(page, nodes) == 6 and _visible(page, links) == 15


def test_screenshot_helper_writes_the_first_screen(report_html, tmp_path):
    require_browser()  # in a child process: this one's Playwright (the browser fixture) holds an event loop
    out = tmp_path / "shot.png"
    res = subprocess.run([sys.executable, "-m", "refusal.evaluation.screenshot", str(report_html), str(out)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 900)
