"""The report's first section: the answer. The verdict in one sentence, what it means, the key figure (the transfer
matrix, else the discovery heatmap), the few numbers it rests on with their CIs, and its caveats (power, seeds, the
model's own warning, a correlational-only basis), then the rules that produced it.

Built from the same JSON-able results as the other sections (refusal.evaluation.sections); the section key stays
``verdict`` so links and checks that look for the verdict find it.
"""
from __future__ import annotations

import html
from pathlib import Path

from refusal.evaluation.report import Html, Image, Section, Table, Text, finite, fmt, fmt_ci, fmt_p

TITLE = "Answer"

MEANING = {
    "monolithic": "ablating one category's refusal circuit removes refusal from the other categories about as much "
                  "as from its own: one shared mechanism carries refusal across categories.",
    "modular": "ablating a category's refusal circuit removes refusal mostly from that category: separate mechanisms "
               "carry refusal for separate categories.",
    "mixed": "the evidence fits neither one shared mechanism nor separate ones: categories share part of the "
             "mechanism, or the two tests disagree (see the basis).",
    "inconclusive": "the tests could not tell: the circuits' effects were not distinguishable from random circuits "
                    "of the same size.",
}


def _ci_of(stats: dict, key: str) -> str:
    ci = (stats.get("ci") or {}).get(key) or {}
    return fmt_ci(stats.get(key), ci.get("low"), ci.get("high"))


def key_numbers(discovery: dict | None, transfer: dict | None) -> Table | None:
    rows = []
    if transfer and transfer.get("statistic"):
        st = transfer["statistic"]
        th = (transfer.get("decision") or {}).get("thresholds") or {}
        rows.append(["transfer ratio ρ (other categories' drop ÷ own drop)", _ci_of(st, "transfer_ratio"),
                     f"≥ {fmt(th.get('monolithic_min_transfer'))}: monolithic; ≤ {fmt(th.get('modular_max_transfer'))}"
                     ": modular"])
        rows.append(["specificity S (own drop − other drop)", _ci_of(st, "specificity"),
                     f"permutation p = {fmt_p(st.get('p_value'), st.get('n_permutations'))}; "
                     f"α = {fmt(th.get('alpha'))}"])
        if "beats_random" in st:
            rows.append(["own drop − random circuits' drop", _ci_of(st, "beats_random"),
                         "must lie above 0, else inconclusive"])
    if discovery:
        ev = discovery.get("evidence") or {}
        core = (discovery.get("shared_core") or {})
        ci = core.get("mean_core_mass_ci") or {}
        rows.append(["discovery: global permutation test", f"p = {fmt_p(ev.get('global_p'))}",
                     "p ≤ α: attributions differ by category (topic features do this in any model)"])
        rows.append(["discovery: category pairs that differ", fmt(ev.get("pair_fraction_differ")),
                     "share of pairs with BH-adjusted p ≤ α"])
        rows.append(["discovery: shared-core mass", fmt_ci(core.get("mean_core_mass", ev.get("mean_core_mass")),
                                                          ci.get("low"), ci.get("high")),
                     "share of each circuit's |IE| on nodes every category's circuit has"])
    return Table(["quantity", "value [95% CI]", "how it is read"], rows, "the numbers the verdict rests on") if rows else None


def caveats(data: dict, discovery: dict | None, transfer: dict | None, verdict: dict) -> list[str]:
    out = []
    st = (transfer or {}).get("statistic") or {}
    n = [k for k in st.get("n_prompts") or [] if isinstance(k, int)]
    s_ci = (st.get("ci") or {}).get("specificity") or {}
    if n:
        line = f"Power: {min(n)}–{max(n)} held-out toxic prompts per category"
        if finite(s_ci.get("low")) and finite(s_ci.get("high")):
            half = (s_ci["high"] - s_ci["low"]) / 2
            line += (f"; S's CI is ±{half:.2g} wide, so a category specificity smaller than that cannot be told from "
                     "none here")
        out.append(line + ".")
    alpha = ((transfer or {}).get("decision") or {}).get("thresholds", {}).get("alpha")
    if finite(st.get("p_value")) and finite(alpha) and st["p_value"] > alpha:
        out.append(f"p(S) = {fmt_p(st['p_value'], st.get('n_permutations'))} > α is not evidence that the categories "
                   "share a mechanism; only the transfer ratio's CI (above) bounds how much they share.")
    seed = (data.get("meta") or {}).get("seed")
    out.append(f"Seeds: this report is one seed ({fmt(seed)}); agreement across seeds was not checked. A verdict that "
               "changes with the seed is inconclusive: rerun train, discover and evaluate with other seeds before "
               "believing it.")
    org = data.get("organism")
    if org:
        check = org.get("check") or {}
        line = f"Model: {org.get('warning') or 'a refusal model organism'}."
        if check.get("word"):
            line += f" Its design check: {check['word']}"
            if check.get("failures"):
                line += " (" + "; ".join(check["failures"]) + ")"
            line += "."
        if org.get("source") != "planted":
            line += (" Its refusal mechanism is whatever fine-tuning produced, not known by construction: the verdict "
                     "cannot be checked against a truth on it (planted organisms, model=planted_<kind>, have one).")
        out.append(line)
    if discovery and discovery.get("verdict") == "modular":
        out.append("Discovery's 'modular' compares per-prompt attributions, which differ by category wherever topic "
                   "features do: read it as category-specific inputs into refusal, not as proof of separate "
                   "mechanisms; the transfer test is the causal one.")
    basis = verdict.get("basis") or ""
    if "correlational" in basis:
        out.append("This verdict rests on correlational evidence only (no causal transfer result).")
    return out


def key_figure(discovery: dict | None, transfer: dict | None, discover_png) -> Image | None:
    plot = ((transfer or {}).get("plots") or {}).get("score_drop")
    if plot:
        return Image(Path(plot), "key figure: refusal-score drop when each category's circuit (rows) is ablated, on "
                                 "each category's held-out toxic prompts (columns). A strong diagonal means modular, "
                                 "a uniform matrix monolithic.")
    heat = (discovery or {}).get("heatmaps") or {}
    if heat:
        key, path = sorted(heat.items())[0]
        return Image(discover_png(path), f"key figure (no transfer matrix): discovery {key.replace('_', ' ')} of the "
                                         "categories' circuits")
    return None


def answer_section(data: dict, discovery: dict | None, transfer: dict | None, discover_png) -> Section:
    verdict = data.get("verdict")
    if not verdict or verdict.get("verdict") is None:
        return Section("verdict", TITLE, missing=(verdict or {}).get("basis") or
                       "neither discovery nor transfer results")
    word = verdict["verdict"]
    model = (data.get("meta") or {}).get("model") or "this model"
    blocks = [Text(f"Verdict: {word}", strong=True),
              Text(f"Refusal in {model} is {word}: {MEANING.get(word, '')} Basis: {verdict.get('basis')}.")]
    fig = key_figure(discovery, transfer, discover_png)
    if fig:
        blocks.append(fig)
    nums = key_numbers(discovery, transfer)
    if nums:
        blocks.append(nums)
    notes = caveats(data, discovery, transfer, verdict)
    blocks.append(Html('<ul class="caveats">' + "".join(f"<li><b>Caveat.</b> {html.escape(c)}</li>" for c in notes)
                       + "</ul>", "\n".join(f"- **Caveat.** {c}" for c in notes)))
    rows = []
    if discovery:
        ev = discovery.get("evidence", {})
        rows.append(["discovery (similarity, permutation tests)", discovery.get("verdict"),
                     "; ".join(f"{k} = {fmt(v)}" for k, v in ev.items()), discovery.get("rule")])
    if transfer and transfer.get("decision"):
        dec = transfer["decision"]
        rows.append(["transfer (causal ablation)", dec.get("verdict"),
                     "; ".join(f"{k} = {fmt(v)}" for k, v in dec.get("evidence", {}).items()), dec.get("rule")])
    if rows:
        blocks.append(Table(["evidence", "verdict", "values", "rule"], rows, "how the verdict was reached"))
    return Section("verdict", TITLE, blocks)
