"""The circuit graph (:mod:`refusal.circuit.graph`) drawn as a self-contained HTML fragment: an inline SVG laid
out in Python (y: layer, early layers at the bottom; x: token position, nodes of one layer and position side by
side), the graph JSON in a ``<script type="application/json">`` block and an inline vanilla-JS script (no
external script, font or request; works offline) that adds a category filter, an |weight| threshold slider for
the links and a tooltip on hovering (or focusing) a node: its id, categories, attribution per category and a
link to its feature dashboard card.

Colours: a shared node (in every category's circuit) or link (an edge of every category's circuit) is dark; a
node of one category only and a category's link take that category's colour; a node of several categories but
not all is grey. Feature nodes are circles, error nodes squares, the metric a triangle on top; link width grows with |weight|, negative
weights dashed. Every element id is prefixed with the fragment's ``uid`` (default: from the graph's content), so
several graphs can share one page; pass distinct uids to embed the same graph twice.
"""
from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path

from refusal.circuit.graph_script import CSS, SCRIPT
from refusal.utils.io import atomic_path

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
SHARED, PARTIAL = "#222222", "#9a9a9a"
SPACING, ROW_H, LEFT, TOP, BOTTOM = 26, 64, 70, 24, 40


def json_for_script(obj) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` and the JS line separators escaped as
    ``\\uXXXX`` (still valid JSON), so no ``</script>`` or ``<!--`` in the data can end the block."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _uid(graph: dict) -> str:
    return "rcg-" + hashlib.sha1(json_for_script(graph).encode()).hexdigest()[:10]


def layout(graph: dict) -> tuple[list[tuple[float, float]], float, float, list, list]:
    """Node centres, SVG width and height, the layer rows [(layer, y)] and position columns [(position, x)]."""
    nodes = graph["nodes"]
    layers = sorted({n["layer"] for n in nodes})
    positions = sorted({n["ctx_idx"] for n in nodes}, key=lambda p: (p is None, p if p is not None else 0))
    cells: dict[tuple, list[int]] = {}
    for i, n in enumerate(nodes):
        cells.setdefault((n["layer"], n["ctx_idx"]), []).append(i)
    widths = [max([len(v) for (_, p), v in cells.items() if p == pos] + [1]) * SPACING + 24 for pos in positions]
    col_x, x = [], float(LEFT)
    for w in widths:
        col_x.append(x + w / 2)
        x += w
    row_y = {layer: TOP + (len(layers) - 1 - k) * ROW_H + ROW_H / 2 for k, layer in enumerate(layers)}
    centres = [(0.0, 0.0)] * len(nodes)
    for (layer, pos), idx in cells.items():
        cx = col_x[positions.index(pos)]
        for k, i in enumerate(idx):
            centres[i] = (round(cx + (k - (len(idx) - 1) / 2) * SPACING, 2), row_y[layer])
    width = max(x + 20, 480.0)
    height = TOP + max(len(layers), 1) * ROW_H + BOTTOM
    return centres, width, height, [(lay, row_y[lay]) for lay in layers], list(zip(positions, col_x))


def _colours(graph: dict) -> tuple[dict[str, str], list[str], list[str]]:
    cats = graph["metadata"]["categories"]
    by_cat = {c: PALETTE[k % len(PALETTE)] for k, c in enumerate(cats)}
    nodes = [SHARED if n["shared"] or n["feature_type"] == "logit" else by_cat[n["categories"][0]] if len(n["categories"]) == 1 else PARTIAL
             for n in graph["nodes"]]
    links = [SHARED if x.get("shared") else by_cat.get(x["category"], PARTIAL) for x in graph["links"]]
    return by_cat, nodes, links


def _svg_links(graph: dict, centres, colours) -> list[str]:
    index = {n["node_id"]: i for i, n in enumerate(graph["nodes"])}
    cats = graph["metadata"]["categories"]
    top = graph["metadata"].get("max_abs_weight") or 1.0
    out = []
    for k, link in enumerate(graph["links"]):
        (x1, y1), (x2, y2) = centres[index[link["source"]]], centres[index[link["target"]]]
        shift = (cats.index(link["category"]) - (len(cats) - 1) / 2) * 1.5 if link["category"] in cats else 0.0
        w = abs(link["weight"] or 0.0)
        dash = ' stroke-dasharray="4 2"' if (link["weight"] or 0.0) < 0 else ""
        out.append(f'<line class="rc-link" data-link="{k}" x1="{x1 + shift:.2f}" y1="{y1:.2f}" x2="{x2 + shift:.2f}" '
                   f'y2="{y2:.2f}" stroke="{colours[k]}" stroke-width="{0.6 + 4.4 * w / top:.2f}"{dash}/>')
    return out


def _svg_nodes(graph: dict, centres, colours) -> list[str]:
    out = []
    for k, (n, (x, y)) in enumerate(zip(graph["nodes"], centres)):
        label = html.escape(n["node_id"], quote=True)
        common = f'class="rc-node" data-node="{k}" tabindex="0" fill="{colours[k]}" aria-label="{label}"'
        if n["feature_type"] == "logit":
            out.append(f'<polygon {common} points="{x - 9:.2f},{y + 7:.2f} {x + 9:.2f},{y + 7:.2f} {x:.2f},{y - 9:.2f}"/>')
        elif n["feature_type"] == "sae error":
            out.append(f'<rect {common} x="{x - 6:.2f}" y="{y - 6:.2f}" width="12" height="12"/>')
        else:
            out.append(f'<circle {common} cx="{x:.2f}" cy="{y:.2f}" r="7"/>')
    return out


def _svg(graph: dict, uid: str) -> str:
    centres, width, height, rows, cols = layout(graph)
    by_cat, node_colours, link_colours = _colours(graph)
    parts = [f'<svg id="{uid}-svg" class="rc-svg" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
             f'aria-label="circuit graph: {len(graph["nodes"])} nodes, {len(graph["links"])} links">']
    top = {n["layer"] for n in graph["nodes"] if n["feature_type"] == "logit"}
    parts += [f'<text class="rc-axis" x="8" y="{y + 4:.2f}">{"metric" if lay in top else f"layer {lay}"}</text>'
              for lay, y in rows]
    parts += [f'<text class="rc-axis" x="{x:.2f}" y="{height - 14:.0f}" text-anchor="middle">'
              f'{"all positions" if p is None else f"pos {p}"}</text>' for p, x in cols]
    parts += _svg_links(graph, centres, link_colours) + _svg_nodes(graph, centres, node_colours)
    parts.append("</svg>")
    return "".join(parts)


def _controls(graph: dict, uid: str) -> str:
    by_cat = _colours(graph)[0]
    opts = '<option value="">all categories</option>' + "".join(
        f'<option value="{html.escape(c, quote=True)}">{html.escape(c)}</option>' for c in by_cat)
    top = graph["metadata"].get("max_abs_weight") or 0.0
    legend = "".join(f'<span class="rc-key"><i style="background:{col}"></i>{html.escape(c)} only</span>'
                     for c, col in by_cat.items())
    legend += (f'<span class="rc-key"><i style="background:{SHARED}"></i>shared (every category)</span>'
               f'<span class="rc-key"><i style="background:{PARTIAL}"></i>several categories</span>')
    return (f'<div class="rc-controls"><label for="{uid}-cat">category </label><select id="{uid}-cat">{opts}</select>'
            f' <label for="{uid}-thr">|weight| &ge; </label><input id="{uid}-thr" type="range" min="0" '
            f'max="{top!r}" step="{top / 100 if top else 1!r}" value="0"> <output class="rc-thr">0</output>'
            f' <span class="rc-count"></span></div><div class="rc-legend">{legend}</div>')


def graph_html(graph: dict, dashboard_href: str | None = None, uid: str | None = None) -> str:
    """The self-contained HTML fragment drawing ``graph``. ``dashboard_href``: None for no dashboard links, else
    the page holding the feature dashboard cards (``""``: this page; a link is then shown only where the card's
    anchor exists)."""
    uid = uid or _uid(graph)
    meta = graph["metadata"]
    href = "" if dashboard_href is None else f' data-dashboard-href="{html.escape(dashboard_href, quote=True)}"'
    caption = (f'{meta["n_nodes"]} nodes ({meta["n_shared"]} shared), {meta["n_links"]} links over the toxic '
               f'circuits of {", ".join(meta["categories"]) or "no category"}')
    return (f'<div class="rc-graph" id="{uid}"{href}><style>{CSS}</style>{_controls(graph, uid)}'
            f'<div class="rc-scroll">{_svg(graph, uid)}</div><p class="rc-caption">{html.escape(caption)}</p>'
            f'<div class="rc-tip" id="{uid}-tip" role="tooltip" hidden></div>'
            f'<script type="application/json" id="{uid}-data">{json_for_script(graph)}</script>'
            f'<script>{SCRIPT.replace("__UID__", json.dumps(uid))}</script></div>')


def graph_page(graph: dict, title: str = "refusal circuits: graph") -> str:
    """A standalone HTML page around the fragment (no dashboard links)."""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{html.escape(title)}</title></head><body style="font-family:system-ui,sans-serif;margin:1em">'
            f'<h1>{html.escape(title)}</h1>\n{graph_html(graph)}\n</body></html>\n')


def write_page(path: str | Path, graph: dict) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(graph_page(graph), encoding="utf-8")
    return path
