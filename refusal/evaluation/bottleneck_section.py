"""The report's section of the bottleneck stage (refusal/evaluation/bottleneck.py): the layer-resolved verdict's
evidence (DESIGN.md §4), built from its JSON-able result; a stage that did not run becomes a section marked missing
(or not run) with the reason, as in refusal/evaluation/sections.py."""
from __future__ import annotations

from pathlib import Path

from refusal.evaluation.report import Image, Section, Table, Text, fmt_ci

KEY, TITLE = "bottleneck", "Shared bottleneck and dissociation by layer"
CAPTIONS = {"residual_heatmap": "residual refusal per category (headroom-normalised: 0 = at the safe floor, 1 = "
                                "untouched) with the shared set ablated, by layer; safe-prompt KL per layer",
            "dissociation": "double-dissociation index by layer with its CI; dashed: ± the margin",
            "best_layer_bars": "residual refusal at the best layer: shared set, the category's own set, random sets "
                          "(95% CIs)"}


def _ci(t: dict | None) -> str:
    return "–" if not t or t.get("estimate") is None else fmt_ci(t["estimate"], t.get("low"), t.get("high"))


def _evidence_cells(r: dict) -> list:
    """verdict, counted categories, mean residual, safe KL, induced, dissociation of one layer result."""
    ev, d = r["evidence"], r["decision"]
    return [d["verdict"], len(d["counted"]), _ci(ev.get("mean_residual")), _ci(ev.get("safe_kl")),
            _ci(ev.get("induced_fraction")), _ci((ev.get("dissociation") or {}).get("mean"))]


def _layer_row(r: dict) -> list:
    return [r["hook"], r["k"], *_evidence_cells(r)]


def _category_rows(r: dict) -> list[list]:
    return [[p["category"], p["n"], "yes" if p["counted"] else "no (headroom CI not above 0)", _ci(p["headroom"]),
             _ci(p["residual"]), _ci(p["random_residual"]), _ci(p["shared_share"])]
            for p in r["evidence"]["per_category"]]


def _direction_row(r: dict) -> list:
    cos = r["directions"]["cosine_with_shared"]
    return [r["hook"], *_evidence_cells(r), ", ".join(f"{c} {v:.2f}" for c, v in cos.items())]


def _direction_blocks(directions: dict | None) -> list:
    if not directions or not directions.get("layers"):
        return []
    model = directions["model"]
    return [Text(f"Direction basis: {model['verdict']}. {model['summary']} Why: {model['reason']}.", strong=True),
            Text("The same sets as residual directions at the node positions (refusal/evaluation/"
                 "bottleneck_directions.py): shared = difference in means of the discovery split's toxic and safe "
                 "prompts, each category's own = its toxic mean minus the safe mean, random = Gaussian directions; "
                 "ablation sets the component along a direction to the safe mean's, induction sets the shared one "
                 "to the toxic mean's. It does not need the SAE to isolate the mechanism in a few latents."),
            Table(["hook", "verdict", "counted categories", "mean residual refusal [CI]", "safe KL [CI]",
                   "induced on safe [CI]", "dissociation [CI]", "cosine of own with shared direction"],
                  [_direction_row(r) for r in directions["layers"]], "the direction basis's layer verdicts")]


def bottleneck_section(result) -> Section:
    if not result:
        return Section(KEY, TITLE, missing="the bottleneck stage did not run")
    if isinstance(result, dict) and result.get("status") in ("missing", "skipped"):
        return Section(KEY, TITLE, missing=result.get("reason") or "the bottleneck stage did not run",
                       not_run=result.get("status") == "skipped")
    model, layers = result["model"], result["layers"]
    blocks = [Text(f"{model['verdict'].capitalize()}. {model['summary']}", strong=True),
              Text(f"Why: {model['reason']}. Rule: {model['rule']}.")]
    combined = result.get("combined")
    if combined:
        blocks.insert(0, Text(f"Across the two bases (SAE feature sets, residual directions): "
                              f"{combined['verdict']} ({combined['reason']}). Rule: {combined['rule']}. The feature "
                              f"basis:", strong=True))
    if not layers:
        return Section(KEY, TITLE, blocks + [Text("; ".join(result.get("notes") or []))])
    k = layers[0]["k"]
    n = result.get("n_prompts", {})
    blocks.append(Text(
        f"At each analysed layer, a shared set of {k} SAE features (the top of the pooled toxic-vs-safe circuit, found "
        f"without category labels) is ablated ({result.get('ablation')}) on the held-out prompts "
        f"({', '.join(f'{c}: {m}' for c, m in n.get('toxic', {}).items())}; safe: {n.get('safe')}); residual refusal "
        "= (ablated − safe mean) / (baseline − safe mean) per category. Equal-size sets from each category's own "
        "circuit give the double-dissociation index. Only categories whose headroom CI is above 0 count."))
    blocks.append(Table(["hook", "k", "verdict", "counted categories", "mean residual refusal [CI]",
                         "safe KL [CI]", "induced on safe [CI]", "dissociation [CI]"],
                        [_layer_row(r) for r in layers], "the layer verdicts (refusal.verdict.LayerRule)"))
    for key, path in result.get("plots", {}).items():
        blocks.append(Image(Path(path), CAPTIONS.get(key, key)))
    best = (model.get("best_layer") or {}).get("layer")
    at = next((r for r in layers if r["layer"] == best), layers[0])
    blocks.append(Table(["category", "n", "counted", "headroom [CI]", "residual, shared set [CI]",
                         "residual, random sets [CI]", "shared share [CI]"], _category_rows(at),
                        f"per category at {at['hook']} (k = {at['k']})"))
    blocks.append(Text("Reasons at " + at["hook"] + ": " + " ".join(at["decision"]["reasons"])))
    resolution = at["evidence"].get("resolution") or {}
    if resolution.get("sentence"):
        blocks.append(Text(f"Power: {resolution['sentence']}"))
    for r in layers:
        curve = r.get("curve") or []
        if len(curve) > 1:
            blocks.append(Text(f"{r['hook']}, shared-set size curve (mean residual refusal): " + "; ".join(
                f"k = {c['k']}: {_ci(c['mean_residual'])}" for c in curve) + "."))
    blocks += _direction_blocks(result.get("directions"))
    notes = result.get("notes", []) + [x for r in layers for x in r.get("notes", [])]
    if notes:
        blocks.append(Text("Notes: " + "; ".join(notes) + "."))
    return Section(KEY, TITLE, blocks)

