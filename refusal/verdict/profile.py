"""The model-level answer from the layer verdicts along depth, and its stability over runs (DESIGN §4).

Model rule (:func:`model_verdict`), on [(layer, layer decision, layer evidence)]:
    mean shared share of a layer = its evidence's mean over counted categories of 1 − r_c (point estimate);
    best layer = the monolithic layer with the largest mean shared share if any layer is monolithic, else the layer
    with the largest mean shared share (ties: the earliest);
    convergence layer = the first layer whose verdict is monolithic or mixed (a shared part carries a measured
    share of every counted category's refusal there), None if there is none.
    monolithic    some layer is monolithic (a shared bottleneck exists there)
    inconclusive  else, when some layer could hold a bottleneck the data cannot confirm (every counted category's
                  residual CI reaches down to bottleneck_max_residual and the categories' own sets do not spare
                  each other: decision["bottleneck_possible"])
    mixed         else, when the best layer is mixed
    modular       else, when some layer is modular and at every layer a shared carrier is excluded (preconditions
                  hold and every counted category is in the small region, or each category's own set spares the
                  others: decision["shared_excluded"]), so no undecided layer could turn the answer into mixed or
                  monolithic
    inconclusive  otherwise

Stability (:func:`stability`): runs that differ in organism seed, SAE seed or attribution method; the verdict if all
runs agree, else inconclusive (DESIGN §4: a verdict that flips under a seed is not a finding).
"""
from __future__ import annotations

from collections import Counter

from refusal.errors import ConfigError

MODEL_RULE = ("monolithic if some layer is monolithic; else inconclusive if some layer could hold a bottleneck "
              "(every counted category's residual CI low <= bottleneck_max_residual and the categories' own sets do "
              "not spare each other); else mixed if the layer with the largest mean shared share is mixed; else "
              "modular if some layer is modular and every layer excludes a shared carrier (every counted category "
              "small, or each category's own set spares the others); otherwise inconclusive")


def _share(evidence: dict) -> float | None:
    t = evidence.get("mean_shared_share")
    return None if t is None else t["estimate"]


def _fmt(t: dict | None) -> str:
    if t is None or t["estimate"] is None:
        return "undefined"
    lo, hi = ("?" if t[k] is None else f"{t[k]:.2f}" for k in ("low", "high"))
    return f"{t['estimate']:.2f} [{lo}, {hi}]"


def _best(rows: list[tuple]) -> tuple | None:
    """The layer whose shared part carries most (monolithic layers first), or None when no layer has a share."""
    pool = [r for r in rows if r[1]["verdict"] == "monolithic"] or rows
    pool = [r for r in pool if _share(r[2]) is not None]
    return max(pool, key=lambda r: (_share(r[2]), -r[0])) if pool else None


def _decide(rows: list[tuple], best: tuple | None) -> tuple[str, str]:
    """(verdict, the reason in words)."""
    mono = [layer for layer, d, _ in rows if d["verdict"] == "monolithic"]
    if mono:
        return "monolithic", f"layers {mono} are monolithic"
    maybe = [layer for layer, d, _ in rows if d["bottleneck_possible"]]
    if maybe:
        return "inconclusive", f"layers {maybe} could hold a shared bottleneck that the data cannot confirm"
    if best is not None and best[1]["verdict"] == "mixed":
        return "mixed", f"layer {best[0]}, where the shared part carries most, is mixed"
    modular = [layer for layer, d, _ in rows if d["verdict"] == "modular"]
    open_layers = [layer for layer, d, _ in rows if not d["shared_excluded"]]
    if modular and not open_layers:
        return "modular", f"layers {modular} are modular and every layer excludes a shared carrier"
    if modular:
        return "inconclusive", f"layers {modular} are modular, but layers {open_layers} do not exclude a shared carrier"
    return "inconclusive", "no layer is monolithic, mixed or modular"


def _lowest(evidence: dict) -> dict | None:
    shares = [p for p in evidence["per_category"] if p["counted"] and p["shared_share"] is not None
              and p["shared_share"]["estimate"] is not None]
    return min(shares, key=lambda p: p["shared_share"]["estimate"]) if shares else None


def _summary(verdict: str, why: str, conv: int | None, best: tuple | None, modular: list[tuple],
             small_max: float) -> str:
    if best is None:
        return f"Inconclusive: {why}."
    if verdict == "inconclusive":
        layer, _, ev = best
        diss = ev["dissociation"]["mean"] if ev.get("dissociation") else None
        return (f"Inconclusive: {why}. Where the shared part carries most (layer {layer}) it carries "
                f"{_fmt(ev['mean_shared_share'])} of the counted categories' refusal (mean of {len(ev['counted'])}), "
                f"and their own sets dissociate by {_fmt(diss)}.")
    layer, _, ev = best
    n, low = len(ev["counted"]), _lowest(ev)
    spread = f"lowest: {low['category']}, {_fmt(low['shared_share'])}" if low else "no category share"
    diss = ev["dissociation"]["mean"] if ev.get("dissociation") else None
    if verdict == "monolithic":
        where = f"Refusal converges at layer {conv}: one shared part there carries" if conv == layer else \
            f"Refusal converges at layer {conv}; at layer {layer} one shared part carries"
        return f"{where} {_fmt(ev['mean_shared_share'])} of every category's refusal (mean of {n}; {spread})."
    if verdict == "mixed":
        where = f"Refusal partly converges at layer {conv}: a shared part there carries" if conv == layer else \
            f"Refusal partly converges at layer {conv}; at layer {layer} a shared part carries"
        return (f"{where} {_fmt(ev['mean_shared_share'])} of each category's refusal (mean of {n}; {spread}) and "
                f"category-specific parts carry the rest (dissociation {_fmt(diss)}).")
    first = modular[0]
    return (f"Refusal stays separate by category: at no analysed layer does a shared part carry more than "
            f"{1 - small_max:.2g} of a category's refusal (most: {_fmt(ev['mean_shared_share'])} at layer {layer}), "
            f"and at layers {[r[0] for r in modular]} each category's own part removes its own refusal more than the "
            f"others' (dissociation {_fmt(first[2]['dissociation']['mean'])} at layer {first[0]}).")


def model_verdict(layers: list[tuple[int, dict, dict]]) -> dict:
    """The model-level verdict (module docstring) from [(layer index, LayerRule decision, layer evidence)]."""
    if not layers:
        raise ConfigError("verdict: model_verdict needs >= 1 analysed layer; got none")
    rows = sorted(layers, key=lambda r: r[0])
    differ = [layer for layer, d, _ in rows if d["thresholds"] != rows[0][1]["thresholds"]]
    if differ:
        raise ConfigError(f"verdict: layers {differ} were decided with other thresholds than layer {rows[0][0]}; "
                          f"decide every layer with one LayerRule")
    best = _best(rows)
    verdict, why = _decide(rows, best)
    conv = next((layer for layer, d, _ in rows if d["verdict"] in ("monolithic", "mixed")), None)
    small = rows[0][1]["thresholds"]["no_bottleneck_min_residual"]
    modular = [r for r in rows if r[1]["verdict"] == "modular"]
    profile = [{"layer": layer, "verdict": d["verdict"], "mean_shared_share": ev.get("mean_shared_share"),
                "regions": d["regions"]} for layer, d, ev in rows]
    at_best = None if best is None else {
        "layer": best[0], "verdict": best[1]["verdict"],
        "shared_share": {p["category"]: p["shared_share"] for p in best[2]["per_category"] if p["counted"]},
        "mean_shared_share": best[2]["mean_shared_share"],
        "dissociation": best[2]["dissociation"]["mean"] if best[2].get("dissociation") else None}
    return {"verdict": verdict, "reason": why, "summary": _summary(verdict, why, conv, best, modular, small),
            "convergence_layer": conv, "best_layer": at_best, "profile": profile, "rule": MODEL_RULE}


def stability(verdicts: list[dict]) -> dict:
    """Agreement of runs' verdicts ({"verdict": ..., optional "run": a name}): the verdict when every run agrees,
    else inconclusive; ``agreement`` = the fraction of runs giving the most common verdict."""
    if not verdicts:
        raise ConfigError("verdict: stability needs >= 1 run's verdict; got none")
    runs = [{"run": v.get("run", i), "verdict": v["verdict"]} for i, v in enumerate(verdicts)]
    counts = Counter(r["verdict"] for r in runs)
    top, k = counts.most_common(1)[0]
    agreed = len(counts) == 1
    verdict = top if agreed else "inconclusive"
    summary = (f"All {len(runs)} runs say {top}." if agreed else
               f"Runs disagree ({', '.join(f'{n} {v}' for v, n in counts.most_common())}): inconclusive.")
    return {"verdict": verdict, "agreement": k / len(runs), "n_runs": len(runs), "counts": dict(counts),
            "runs": runs, "summary": summary}
