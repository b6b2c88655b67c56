"""What the data can resolve: CI half-widths of a layer's evidence and the prompts needed for a narrower CI.

A rule decides by where a CI lies relative to a threshold, so an effect whose distance from the threshold is
smaller than the CI's half-width stays undecided: the half-width is the smallest effect the data resolve. Half-widths
shrink as 1/√n, so reaching ``target`` from half-width w with n prompts per category takes about n·(w/target)²
prompts per category.
"""
from __future__ import annotations

import math

TARGET = 0.1  # the half-width the "prompts needed" estimates aim at (residual and dissociation are fractions)


def half_width(t: dict | None) -> float | None:
    """(high − low) / 2 of an {"estimate", "low", "high"} triple; None when undefined."""
    if t is None or t.get("low") is None or t.get("high") is None:
        return None
    return (t["high"] - t["low"]) / 2


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def prompts_needed(width: float | None, n: float, target: float = TARGET) -> int | None:
    """Prompts per category for a half-width of ``target``, from half-width ``width`` at ``n`` prompts (1/√n)."""
    if width is None or not n or target <= 0:
        return None
    return max(2, math.ceil(n * (width / target) ** 2))


def _sentence(residual: float | None, dissociation: float | None) -> str:
    parts = [f"residual refusal to ±{residual:.2f}" if residual is not None else None,
             f"the dissociation index to ±{dissociation:.2f}" if dissociation is not None else None]
    parts = [p for p in parts if p]
    if not parts:
        return "No counted category: the data resolve nothing at this layer."
    return (f"These prompts resolve {' and '.join(parts)}; an effect closer than that to a threshold stays "
            f"inconclusive.")


def resolution(evidence: dict, target: float = TARGET) -> dict:
    """Half-widths of the statistics the rules read (residual: mean over counted categories; pair dissociation:
    mean over pairs), and the prompts per category that would bring them to ``target``."""
    counted = [p for p in evidence["per_category"] if p["counted"]]
    n = _mean([p["n"] for p in counted]) or 0
    diss = evidence.get("dissociation") or {}
    w = {"residual": _mean([half_width(p["residual"]) for p in counted]),
         "dissociation_mean": half_width(diss.get("mean")),
         "dissociation_pair": _mean([half_width(p) for p in diss.get("pairs", [])]),
         "safe_kl": half_width(evidence.get("safe_kl")),
         "induced_fraction": half_width(evidence.get("induced_fraction"))}
    return {"half_width": w, "target_half_width": target, "mean_prompts_per_counted_category": n,
            "prompts_needed": {k: prompts_needed(w[k], n, target) for k in ("residual", "dissociation_pair")},
            "sentence": _sentence(w["residual"], w["dissociation_pair"])}
