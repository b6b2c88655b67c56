"""The report section of the feature dashboards (a discover run's ``dashboards.json``, refusal/circuit/dashboards.py),
and the same tables logged to W&B.

In report.html every feature node gets a card with the anchor :func:`dashboard_anchor` (so circuit tables and the
graph can link to ``#dash-<hook>-<feature>``): its activation frequency and mean per category × label, its
attribution in each circuit, its top promoted / suppressed tokens and its top-activating prompts, the token of
largest activation marked (``<mark>``) in a window of context. Every text taken from the file is HTML-escaped.
report.md gets the node table and a note that the cards are in report.html.
"""
from __future__ import annotations

import html

from refusal.circuit.dashboards import node_key
from refusal.evaluation.report import Html, Section, Table, Text, fmt

KEY, TITLE = "dashboards", "Feature dashboards"
CONTEXT = 12  # tokens shown on each side of the marked one
PREVIEW = 3  # promoted / suppressed tokens in the node table
_STYLE = ("<style>.dash-card{border:1px solid #bbb;border-radius:4px;padding:0.4em 0.9em;margin:0.8em 0}"
          ".dash-card h3{margin:0.2em 0;font-size:1em}.dash-ex{font-family:monospace;white-space:pre-wrap;"
          "font-size:0.85em}.dash-card mark{background:#ffd54f;font-weight:bold}"
          ".dash-tok{font-family:monospace;background:#f2f2f2;padding:0 2px}</style>")


def dashboard_anchor(hook: str, feature: int | str) -> str:
    """The HTML id of a feature node's card in report.html: ``dash-<hook>-<feature>`` (sanitized)."""
    return f"dash-{node_key(hook, feature)}"


def _tok(text: str) -> str:
    """A token's text made visible (line breaks and tabs as symbols), not yet escaped."""
    return text.replace("\n", "⏎").replace("\t", "⇥")


def _token_list(entries: list[dict], n: int | None = None) -> str:
    return ", ".join(f"{_tok(e['token'])!r} {fmt(e['value'])}" for e in entries[:n])


def _attribution_cells(node: dict) -> list[tuple[str, object]]:
    return [(f"{kind}/{cat}", v) for kind, cats in sorted(node.get("attribution", {}).items())
            for cat, v in sorted(cats.items())]


def dashboard_tables(dashboards: dict) -> dict[str, tuple[list[str], list[list]]]:
    """{name: (columns, rows)} of the dashboards: ``nodes``, ``by_group``, ``examples`` and ``logits``."""
    nodes = [dashboards["nodes"][k] for k in sorted(dashboards.get("nodes", {}))]
    prompts = dashboards.get("prompts", {})
    attr_cols = sorted({c for n in nodes for c, _ in _attribution_cells(n)})
    out = {"nodes": (["node", "hook", "feature", "frequency", "mean", "promoted", "suppressed", *attr_cols], [
        [n["key"], n["hook"], n["feature"], n["activation"]["frequency"], n["activation"]["mean"],
         _token_list(n["logits"]["promoted"], PREVIEW), _token_list(n["logits"]["suppressed"], PREVIEW),
         *(dict(_attribution_cells(n)).get(c) for c in attr_cols)] for n in nodes])}
    out["by_group"] = (["node", "category", "label", "n_tokens", "frequency", "mean"], [
        [n["key"], g["category"], g["label"], g["n_tokens"], g["frequency"], g["mean"]]
        for n in nodes for g in n["by_group"]])
    out["examples"] = (["node", "rank", "prompt_id", "category", "label", "split", "activation", "token", "context"], [
        [n["key"], r, e["prompt_id"], e["category"], e["label"], e["split"], e["activation"],
         *_example_text(prompts.get(e["prompt_id"], {}).get("tokens", []), e["token_index"])]
        for n in nodes for r, e in enumerate(n["top_examples"], 1)])
    out["logits"] = (["node", "direction", "rank", "token", "token_id", "value"], [
        [n["key"], d, r, _tok(t["token"]), t["token_id"], t["value"]]
        for n in nodes for d in ("promoted", "suppressed") for r, t in enumerate(n["logits"][d], 1)])
    return out


def _window(tokens: list[str], index: int | None) -> tuple[bool, list[str], str | None, list[str], bool]:
    """(cut on the left, tokens before the marked one, the marked one, tokens after, cut on the right)."""
    if index is None or not 0 <= index < len(tokens):
        tail = tokens[-2 * CONTEXT:]
        return len(tail) < len(tokens), tail, None, [], False
    lo, hi = max(0, index - CONTEXT), min(len(tokens), index + CONTEXT + 1)
    return lo > 0, tokens[lo:index], tokens[index], tokens[index + 1: hi], hi < len(tokens)


def _example_text(tokens: list[str], index: int | None) -> tuple[str | None, str]:
    cut_l, before, marked, after, cut_r = _window(tokens, index)
    mid = "" if marked is None else f"[[{_tok(marked)}]]"
    text = ("…" if cut_l else "") + _tok("".join(before)) + mid + _tok("".join(after)) + ("…" if cut_r else "")
    return (None if marked is None else _tok(marked)), text


def _example_html(tokens: list[str], index: int | None) -> str:
    cut_l, before, marked, after, cut_r = _window(tokens, index)
    esc = lambda ts: html.escape(_tok("".join(ts)))  # noqa: E731
    mid = "" if marked is None else f"<mark>{html.escape(_tok(marked))}</mark>"
    return ("…" if cut_l else "") + esc(before) + mid + esc(after) + ("…" if cut_r else "")


def _small_table(columns: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(node: dict, prompts: dict) -> str:
    a = node["activation"]
    toks = lambda d: ", ".join(  # noqa: E731
        f'<span class="dash-tok">{html.escape(_tok(t["token"]))}</span> {html.escape(fmt(t["value"]))}'
        for t in node["logits"][d]) or "–"
    attribution = ", ".join(f"{html.escape(c)}: {html.escape(fmt(v))}" for c, v in _attribution_cells(node))
    groups = _small_table(["category", "label", "tokens", "frequency", "mean"],
                          [[g["category"], g["label"], g["n_tokens"], g["frequency"], g["mean"]]
                           for g in node["by_group"]])
    examples = "".join(
        f'<li><b>{html.escape(fmt(e["activation"]))}</b> <small>{html.escape(e["prompt_id"])} · '
        f'{html.escape(e["category"])} · {html.escape(e["label"])}</small><div class="dash-ex">'
        f'{_example_html(prompts.get(e["prompt_id"], {}).get("tokens", []), e["token_index"])}</div></li>'
        for e in node["top_examples"])
    return (f'<div class="dash-card" id="{html.escape(dashboard_anchor(node["hook"], node["feature"]))}">'
            f'<h3>{html.escape(node["hook"])} · feature {html.escape(str(node["feature"]))}</h3>'
            f'<p>active on {html.escape(fmt(a["frequency"]))} of {html.escape(fmt(a["n_tokens"]))} tokens, mean '
            f'{html.escape(fmt(a["mean"]))}. Attribution: {attribution or "–"}</p>{groups}'
            f"<p>Promotes: {toks('promoted')}<br>Suppresses: {toks('suppressed')}</p>"
            f'<ol>{examples or "<li>never active</li>"}</ol></div>')


def dashboards_section(dashboards: dict | None) -> Section:
    """The dashboards' section; missing (with the reason) when the discover run wrote none."""
    if not dashboards:
        return Section(KEY, TITLE, missing="no dashboards.json in the discover run (no discover_dir given, or "
                                           "circuit.dashboards.enabled=false)")
    if dashboards.get("status") in ("missing", "skipped"):
        return Section(KEY, TITLE, missing=dashboards.get("reason") or "no dashboards",
                       not_run=dashboards.get("status") == "skipped")
    nodes = [dashboards["nodes"][k] for k in sorted(dashboards.get("nodes", {}))]
    src = dashboards.get("source", {})
    origin = "the activation store" if src.get("kind") == "store" else f"forwards of the {src.get('split')} split"
    blocks = [Text(f"{len(nodes)} feature nodes over {fmt(dashboards.get('n_tokens'))} tokens, activations from "
                   f"{origin}. "
                   "Frequency: share of tokens with activation > 0; mean: over all tokens. Logit effects: the decoder "
                   "direction times the final norm's gain and the unembedding.")]
    columns, rows = dashboard_tables(dashboards)["nodes"]
    blocks.append(Table(columns, rows, "feature nodes (attribution per circuit: kind/category)"))
    for e in dashboards.get("error_nodes", []):
        blocks.append(Text(f"{e['hook']}: error node, no dashboard ({', '.join(e.get('circuits', []))})"))
    if nodes:
        prompts = dashboards.get("prompts", {})
        blocks.append(Html(_STYLE + "".join(_card(n, prompts) for n in nodes),
                           "Per-node cards (top-activating prompts, the max token highlighted) are in report.html."))
    return Section(KEY, TITLE, blocks)


def log_dashboards(run, dashboards: dict | None, prefix: str = "discover/dashboards") -> None:
    """Log the dashboards' tables (:func:`dashboard_tables`) to the W&B ``run``; no-op when either is None."""
    if run is None or not dashboards or not dashboards.get("nodes"):
        return
    import wandb

    run.log({f"{prefix}/{name}": wandb.Table(columns=cols, data=rows)
             for name, (cols, rows) in dashboard_tables(dashboards).items()})
