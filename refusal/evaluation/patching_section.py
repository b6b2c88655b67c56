"""Report sections of the patching sweeps and the ablation curves (refusal/evaluation/patching.py,
ablation_curve.py). A stage result that is absent or marks itself missing/skipped gives a missing section, as in
refusal/evaluation/sections.py."""
from __future__ import annotations

import math
from pathlib import Path

from refusal.evaluation.report import Image, Section, Table, Text, fmt, fmt_ci

PATCHING_KEY, PATCHING_TITLE = "patching", "Activation patching (where refusal is decided)"
ABLATION_KEY, ABLATION_TITLE = "ablation_curve", "Ablation curves (top-k components vs random)"
N_TOP = 10


def _missing(key: str, title: str, result, default: str) -> Section | None:
    if not result:
        return Section(key, title, missing=default)
    if isinstance(result, dict) and result.get("status") in ("missing", "skipped"):
        return Section(key, title, missing=result.get("reason") or default, not_run=result.get("status") == "skipped")
    return None


def _components(effects: dict, layers: list[int]) -> list[tuple[str, str, int, int]]:
    """(label, kind, layer row, index) of every head and MLP site in the effects."""
    out = []
    for li, row in enumerate((effects.get("head") or {}).get("all", [])):
        out += [(f"L{layers[li]}.H{h}", "head", li, h) for h in range(len(row))]
    out += [(f"L{layers[li]}.MLP", "mlp", li, 0) for li in range(len((effects.get("mlp") or {}).get("all", [])))]
    return out


def _effect(effects: dict, kind: str, group: str, li: int, i: int):
    v = effects[kind][group][li]
    v = v[i] if kind == "head" else v
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _top_table(result: dict, direction: str) -> Table | None:
    effects = result["effects"][direction]
    comps = _components(effects, result["layers"])
    if not comps:
        return None
    groups = ["all", *result["categories"]]
    pooled = [_effect(effects, kind, "all", li, i) for _, kind, li, i in comps]
    order = sorted(range(len(comps)), key=lambda j: (pooled[j] is None, -(pooled[j] or 0.0), j))[:N_TOP]
    rows = [[comps[j][0], *(_effect(effects, comps[j][1], g, comps[j][2], comps[j][3]) for g in groups)]
            for j in order]
    return Table(["component", *groups], rows,
                 f"{direction}: the {len(rows)} heads/MLPs with the largest pooled effect, and their effect per "
                 "category")


def _best_resid(result: dict, direction: str) -> Table | None:
    resid = result["effects"][direction].get("resid")
    if not resid:
        return None
    rows = []
    for g in ["all", *result["categories"]]:
        cells = [(v, li, p) for li, row in enumerate(resid[g]) for p, v in enumerate(row)
                 if v is not None and not math.isnan(v)]
        v, li, p = max(cells) if cells else (None, None, None)
        rows.append([g, None if li is None else result["layers"][li],
                     None if p is None else result["position_tokens"][p], v])
    return Table(["group", "layer", "position", "effect"], rows,
                 f"{direction}: the residual-stream site with the largest effect, per group")


def patching_section(result) -> Section:
    miss = _missing(PATCHING_KEY, PATCHING_TITLE, result, "the patching stage did not run")
    if miss:
        return miss
    blocks = [Text(f"Activation patching on {result['n_toxic']} toxic and {result['n_safe']} safe {result['split']} "
                   f"prompts ({result['corruption']} corruption), at the last {result['n_positions']} prompt tokens, "
                   f"residual stream at {result['resid_hook']}. Denoising: run the safe prompt, patch in the toxic "
                   "activation; effect (m_patched − m_corrupt)/(m_clean − m_corrupt), 1 = refusal fully restored. "
                   "Noising: run the toxic prompt, patch in the safe activation; effect (m_clean − m_patched)/"
                   "(m_clean − m_corrupt), 1 = refusal brought to the safe level. m: mean refusal score of the "
                   "group.")]
    base = result["baseline"]
    blocks.append(Table(["direction", "group", "prompts", "m_clean (toxic)", "m_corrupt (safe)"],
                        [[d, g, b["n"], b["m_clean"], b["m_corrupt"]] for d, by in base.items() for g, b in by.items()],
                        "unpatched mean refusal scores (a small gap makes the normalised effects noisy)"))
    for direction in result["effects"]:
        for table in (_best_resid(result, direction), _top_table(result, direction)):
            if table is not None:
                blocks.append(table)
    captions = {"resid": "residual stream, layer × position", "heads": "attention heads, layer × head",
                "mlp": "MLP outputs per layer"}
    for name, path in (result.get("plots") or {}).items():
        kind, _, direction = name.partition("_")
        blocks.append(Image(Path(path), f"{captions[kind]}{f' ({direction})' if direction else ''}, pooled effect"))
    return Section(PATCHING_KEY, PATCHING_TITLE, blocks)


def _rand_cell(result: dict, i: int) -> str:
    r = result["random"]["all"]
    if not result["n_random"] or r["mean"][i] is None:
        return fmt(None)
    return f"{fmt(r['mean'][i])} [{fmt(r['min'][i])}, {fmt(r['max'][i])}]"


def ablation_curve_section(result) -> Section:
    miss = _missing(ABLATION_KEY, ABLATION_TITLE, result, "the ablation_curve stage did not run")
    if miss:
        return miss
    cats = [g for g in result["curve"] if g != "all"]
    blocks = [Text(f"The top k of {result['n_components']} components ({', '.join(result['components'])}), ranked by "
                   f"their pooled {result['rank_by']} patching effect, {result['ablation']}-ablated at the last "
                   f"{result['n_positions']} prompt tokens; mean refusal score of held-out toxic prompts against k, "
                   f"with {result['n_random']} random sets of each size as the floor. Residual fraction: "
                   "(s_k − s_safe)/(s_0 − s_safe)."),
              Table(["k", "top k: all", "random k: mean [min, max]", "residual fraction", *cats],
                    [[k, result["curve"]["all"][i], _rand_cell(result, i), result["residual_fraction"]["all"][i],
                      *(result["curve"][c][i] for c in cats)] for i, k in enumerate(result["ks"])],
                    f"mean refusal score (held-out toxic prompts: {result['n_prompts']['all']}; safe prompts, "
                    f"unablated: {fmt(result['safe_score'])})"),
              Table(["rank", "component", "effect"], [[i + 1, r["component"], r["effect"]]
                                                      for i, r in enumerate(result["ranking"][:N_TOP])],
                    f"the first {min(N_TOP, len(result['ranking']))} components of the ranking")]
    if result.get("generated"):
        blocks.append(Table(["condition", "category", "refusal rate", "n"],
                            [[r["condition"], r["category"], fmt_ci(r["refusal_rate"], r["refusal_rate_ci_low"],
                                                                    r["refusal_rate_ci_high"]), r["n"]]
                             for r in result["generated"]],
                            "judged refusal rate of the held-out toxic prompts with the top k ablated"))
    if result.get("plot"):
        blocks.append(Image(Path(result["plot"]), "refusal score against k: top k (black), per category, random band"))
    return Section(ABLATION_KEY, ABLATION_TITLE, blocks)
