"""The report's first section: the answer. The verdict in one sentence, what it means, the key figure, the few
numbers it rests on with their CIs, and its caveats (power, seeds, the model's own warning), then how it was reached.

The verdict is the layer-resolved one (refusal.verdict.final: the bottleneck stage's shared-bottleneck and
dissociation evidence, DESIGN.md §4). Discovery's permutation tests (*recognition*) and the transfer matrix's rule are
shown as descriptive evidence, never as the verdict. Built from the same JSON-able results as the other sections
(refusal.evaluation.sections); the section key stays ``verdict`` so links and checks that look for the verdict find
it.
"""
from __future__ import annotations

import html
from pathlib import Path

from refusal.evaluation.report import Html, Image, Section, Table, Text, finite, fmt, fmt_ci, fmt_p
from refusal.verdict.final import ran

TITLE = "Answer"

MEANING = {
    "monolithic": "at some analysed layer a small set of features, found from pooled toxic-vs-safe prompts without "
                  "category labels, carries most of every refused category's refusal (ablating it leaves little of "
                  "each category's refusal above the safe floor, more than random sets of its size do, with small KL "
                  "on safe prompts): one shared bottleneck.",
    "modular": "at no analysed layer does a shared set carry much of any category's refusal, and each category's own "
               "features remove its own refusal more than the others' (double dissociation): separate mechanisms.",
    "mixed": "a shared part carries a measured fraction of each category's refusal and category-specific parts the "
             "rest.",
    "inconclusive": "the evidence cannot decide (CIs too wide, a condition of every label failed, or the layer-resolved "
                    "test did not run); see the basis. It is not a finding of sameness or of difference.",
}
def _ci_of(stats: dict, key: str) -> str:
    ci = (stats.get("ci") or {}).get(key) or {}
    return fmt_ci(stats.get(key), ci.get("low"), ci.get("high"))


def _t(t: dict | None) -> str:
    return "–" if not t or t.get("estimate") is None else fmt_ci(t["estimate"], t.get("low"), t.get("high"))


def best_layer(bottleneck: dict | None) -> dict | None:
    """The bottleneck stage's layer result at the model verdict's best layer (the first layer if none)."""
    if not ran(bottleneck) or not bottleneck.get("layers"):
        return None
    best = (bottleneck["model"].get("best_layer") or {}).get("layer")
    return next((r for r in bottleneck["layers"] if r["layer"] == best), bottleneck["layers"][0])


def _bottleneck_rows(bottleneck: dict | None) -> list[list]:
    at = best_layer(bottleneck)
    if at is None:
        return []
    ev, th = at["evidence"], at["decision"]["thresholds"]
    reading = (f"bottleneck: CI low ≥ {fmt(1 - th['bottleneck_max_residual'])} in every category; none: CI high ≤ "
               f"{fmt(1 - th['no_bottleneck_min_residual'])}")
    rows = [[f"share of {p['category']}'s refusal the shared set carries (n = {p['n']})", _t(p["shared_share"]),
             reading if i == 0 else "″"] for i, p in enumerate(q for q in ev["per_category"] if q["counted"])]
    rows.append(["safe-prompt KL of the shared ablation", _t(ev.get("safe_kl")), f"≤ {fmt(th['max_kl'])} (CI high)"])
    rows.append(["refusal induced on safe prompts (share of headroom)", _t(ev.get("induced_fraction")),
                 f"≥ {fmt(th['min_induced'])} (CI low) for a bottleneck"])
    rows.append(["double-dissociation index", _t((ev.get("dissociation") or {}).get("mean")),
                 f"≥ {fmt(th['dissociation_margin'])} (CI low): categories dissociate"])
    return rows


def _basis_rows(layer_label: str, model_label: str, basis: dict) -> list[list]:
    """The "how the verdict was reached" rows of one basis: each layer's decision, then its model verdict."""
    rows = [[f"{r['hook']} ({layer_label})", r["decision"]["verdict"], " ".join(r["decision"]["reasons"]),
             r["decision"]["rule"]] for r in basis.get("layers") or []]
    if basis.get("model"):
        m = basis["model"]
        rows.append([f"model (along depth), {model_label}", m["verdict"], m["reason"], m["rule"]])
    return rows


def key_numbers(discovery: dict | None, transfer: dict | None, bottleneck: dict | None = None) -> Table | None:
    rows = _bottleneck_rows(bottleneck)
    if transfer and transfer.get("statistic"):
        st = transfer["statistic"]
        th = (transfer.get("decision") or {}).get("thresholds") or {}
        what = "share of refusal removed" if st.get("normalised") else "drop"
        rows.append([f"descriptive — transfer ratio ρ (other categories' {what} ÷ own {what})",
                     _ci_of(st, "transfer_ratio"),
                     f"CI ≥ {fmt(th.get('monolithic_min_transfer'))}: monolithic; CI ≤ "
                     f"{fmt(th.get('modular_max_transfer'))} (and p(S) ≤ α): modular"])
        rows.append(["descriptive — specificity S (own drop − other drop)", _ci_of(st, "specificity"),
                     f"permutation p = {fmt_p(st.get('p_value'), st.get('n_permutations'))}; "
                     f"α = {fmt(th.get('alpha'))}"])
        if "beats_random" in st:
            rows.append(["descriptive — own drop − random circuits' drop", _ci_of(st, "beats_random"),
                         "above 0: the circuits matter more than random sets"])
    if discovery:
        ev = discovery.get("evidence") or {}
        core = (discovery.get("shared_core") or {})
        ci = core.get("mean_core_mass_ci") or {}
        rows.append(["recognition: global permutation test", f"p = {fmt_p(ev.get('global_p'))}",
                     "p ≤ α: attributions differ by category (topic features do this in any model)"])
        rows.append(["recognition: category pairs that differ", fmt(ev.get("pair_fraction_differ")),
                     "share of pairs with BH-adjusted p ≤ α"])
        rows.append(["recognition: shared-core mass", fmt_ci(core.get("mean_core_mass", ev.get("mean_core_mass")),
                                                          ci.get("low"), ci.get("high")),
                     "share of each circuit's |IE| on nodes every category's circuit has"])
    at = best_layer(bottleneck)
    where = f" (shared set of {at['k']} features at {at['hook']})" if at else ""
    return Table(["quantity", "value [95% CI]", "how it is read"], rows,
                 f"the numbers the verdict rests on{where}") if rows else None


def caveats(data: dict, discovery: dict | None, transfer: dict | None, verdict: dict) -> list[str]:
    out = []
    at = best_layer(data.get("bottleneck"))
    if at is not None:
        ns = [p["n"] for p in at["evidence"]["per_category"]]
        left = [p["category"] for p in at["evidence"]["per_category"] if not p["counted"]]
        line = f"Power: {min(ns)}–{max(ns)} held-out toxic prompts per category at {at['hook']}. " + \
            ((at["evidence"].get("resolution") or {}).get("sentence") or "")
        out.append(line.strip())
        if left:
            out.append(f"Not counted (refused too little to measure: headroom CI not above 0): {', '.join(left)}.")
    st = (transfer or {}).get("statistic") or {}
    alpha = ((transfer or {}).get("decision") or {}).get("thresholds", {}).get("alpha")
    if finite(st.get("p_value")) and finite(alpha) and st["p_value"] > alpha:
        out.append(f"Transfer p(S) = {fmt_p(st['p_value'], st.get('n_permutations'))} > α is not evidence that the "
                   "categories share a mechanism; only the transfer ratio's CI against its margins is read.")
    left = (transfer or {}).get("not_counted") or []
    if left:
        out.append(f"Transfer matrix: not counted (headroom CI not above 0): {', '.join(left)}.")
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
    if discovery and discovery.get("recognition") == "modular":
        out.append("Recognition's 'modular' compares per-prompt attributions, which differ by category wherever topic "
                   "features do: it shows category-specific inputs into refusal, not separate mechanisms.")
    hooks = verdict.get("layers") or []
    if len(hooks) == 1:
        out.append(f"One analysed layer ({hooks[0]}): where the categories converge along depth cannot be asked; "
                   "train SAEs at more layers (activations.layers) to get the profile.")
    return out


def key_figure(discovery: dict | None, transfer: dict | None, discover_png, bottleneck: dict | None = None
               ) -> Image | None:
    plots = (bottleneck or {}).get("plots") or {} if ran(bottleneck) else {}
    order = (("residual_heatmap", "key figure: residual refusal of each category (columns; 0 = at the "
                                              "safe floor, 1 = untouched) with the shared set ablated, by layer "
                                              "(rows). A column near 0 at a layer: that category's refusal passes "
                                              "through the shared bottleneck there."),
                         ("best_layer_bars", "key figure: residual refusal per category with the shared set, the "
                                        "category's own set and random sets ablated"))
    if len((bottleneck or {}).get("layers") or []) == 1:  # one layer: the bars say more than a one-row heatmap
        order = order[::-1]
    for key, caption in order:
        if plots.get(key):
            return Image(Path(plots[key]), caption)
    tplots = (transfer or {}).get("plots") or {}
    if tplots.get("score_drop_share"):
        return Image(Path(tplots["score_drop_share"]), "key figure: share of each category's refusal (columns, "
                     "normalised by headroom) removed when each category's features (rows) are ablated. A strong "
                     "diagonal means modular, a uniform matrix monolithic.")
    if tplots.get("score_drop"):
        return Image(Path(tplots["score_drop"]), "key figure: refusal-score drop when each category's circuit (rows) "
                     "is ablated, on each category's held-out toxic prompts (columns). A strong diagonal means "
                     "modular, a uniform matrix monolithic.")
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
                       "no bottleneck, discovery or transfer results")
    word = verdict["verdict"]
    model = (data.get("meta") or {}).get("model") or "this model"
    bottleneck = data.get("bottleneck")
    blocks = [Text(f"Verdict: {word}", strong=True),
              Text((f"Refusal in {model} is {word}: " if word != "inconclusive" else
                    f"Whether refusal in {model} is monolithic or modular is inconclusive: ") +
                   f"{MEANING.get(word, '')} Basis: {verdict.get('basis')}.")]
    if verdict.get("summary"):
        blocks.append(Text(verdict["summary"]))
    fig = key_figure(discovery, transfer, discover_png, bottleneck)
    if fig:
        blocks.append(fig)
    nums = key_numbers(discovery, transfer, bottleneck)
    if nums:
        blocks.append(nums)
    notes = caveats(data, discovery, transfer, verdict)
    blocks.append(Html('<ul class="caveats">' + "".join(f"<li><b>Caveat.</b> {html.escape(c)}</li>" for c in notes)
                       + "</ul>", "\n".join(f"- **Caveat.** {c}" for c in notes)))
    rows = []
    if ran(bottleneck) and bottleneck.get("layers"):
        rows += _basis_rows("shared bottleneck, dissociation", "SAE feature sets", bottleneck)
        rows += _basis_rows("residual directions", "residual directions", bottleneck.get("directions") or {})
        if bottleneck.get("combined"):
            c = bottleneck["combined"]
            rows.append(["both bases (the verdict)", c["verdict"], c["reason"], c["rule"]])
    if discovery:
        ev = discovery.get("evidence", {})
        rows.append(["recognition (discovery's permutation tests; descriptive)", discovery.get("recognition"),
                     "; ".join(f"{k} = {fmt(v)}" for k, v in ev.items()), discovery.get("rule")])
    if transfer and transfer.get("decision"):
        dec = transfer["decision"]
        rows.append(["transfer matrix rule (descriptive)", dec.get("verdict"),
                     "; ".join(f"{k} = {fmt(v)}" for k, v in dec.get("evidence", {}).items()), dec.get("rule")])
    if rows:
        blocks.append(Table(["evidence", "verdict", "values", "rule"], rows, "how the verdict was reached"))
    return Section("verdict", TITLE, blocks)
