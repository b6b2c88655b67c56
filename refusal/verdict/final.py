"""The run's verdict (``verdict.json``, the report's answer): the layer-resolved model verdict of the bottleneck
stage (DESIGN.md §4: a shared bottleneck, double dissociation, effect sizes with CIs against margins), with the older
statistics attached as descriptive evidence only:

- ``recognition``: discover's permutation tests on per-prompt attributions (refusal.circuit.verdict.DecisionRule).
  They reject in any model whose topic features differ by category, so they measure category recognition, not
  separate mechanisms;
- ``transfer``: the transfer matrix's rule (refusal.circuit.verdict.TransferRule): whole multi-layer circuits
  ablated across categories, headroom-normalised, by the transfer ratio's CI against margins; it says how much of
  one category's refusal another category's features carry, not where a shared bottleneck sits.

Neither is ever a fallback: without the bottleneck stage's evidence the verdict is ``inconclusive`` (``None`` when
there is no evidence of any kind), and the basis says why.
"""
from __future__ import annotations

BASIS = "shared bottleneck and dissociation per analysed layer (DESIGN.md §4)"


def ran(stage: dict | None) -> bool:
    """Whether a stage's result is a measurement (not absent, missing or skipped)."""
    return bool(stage) and stage.get("status") not in ("missing", "skipped")


def final_verdict(bottleneck: dict | None, recognition: str | None, transfer: str | None) -> dict:
    """{"verdict", "basis", "recognition", "transfer"[, "summary", "reason", "convergence_layer", "layers",
    "by_basis"]}. With both bases measured (feature sets and directions), the verdict is refusal.verdict.bases'
    combination, and the summary, reason and convergence layer are those of the basis that decided it (the feature
    basis when it is among them)."""
    described = {"recognition": recognition, "transfer": transfer}
    if not ran(bottleneck) or not bottleneck.get("layers"):
        if not ran(bottleneck) and recognition is None and transfer is None:
            return {"verdict": None, "basis": "no evidence: neither the bottleneck stage nor discovery or transfer "
                                              "results", **described}
        why = ((bottleneck or {}).get("reason") or "the bottleneck stage did not run (add bottleneck to "
               "evaluation.stages)") if not ran(bottleneck) else bottleneck["model"]["reason"]
        return {"verdict": "inconclusive", "basis": f"no layer-resolved evidence: {why}; recognition and transfer are "
                                                    "descriptive, never the verdict", **described}
    hooks = [r["hook"] for r in bottleneck["layers"]]
    model, combined = bottleneck["model"], bottleneck.get("combined")
    if combined is None:  # a feature-basis-only result
        return {"verdict": model["verdict"], "basis": f"{BASIS}, at {', '.join(hooks)}", "summary": model["summary"],
                "reason": model["reason"], "convergence_layer": model.get("convergence_layer"), "layers": hooks,
                **described}
    deciding = model if "features" in combined["basis"] else bottleneck["directions"]["model"]
    names = " and ".join(combined["basis"])
    return {"verdict": combined["verdict"], "basis": f"{BASIS} ({names}), at {', '.join(hooks)}",
            "summary": deciding["summary"] if combined["verdict"] != "inconclusive" or deciding["verdict"] ==
            "inconclusive" else f"Inconclusive: {combined['reason']}.",
            "reason": f"{combined['reason']}; {deciding['reason']}", "by_basis": combined["by_basis"],
            "convergence_layer": deciding.get("convergence_layer") if combined["verdict"] != "inconclusive" else None,
            "layers": hooks, **described}
