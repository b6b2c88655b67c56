"""One answer from the two bases of the bottleneck stage: SAE feature sets and residual directions (DESIGN §4: a
shared bottleneck is "a small node set or low-rank subspace"). Each basis gives a model verdict by the same rules
(profile.model_verdict); they are combined as follows:
    both agree                         that verdict
    both conclusive, different         inconclusive (the bases contradict each other)
    one conclusive, one inconclusive   the conclusive one, except modular when the inconclusive basis has a layer
                                       that could hold a bottleneck (decision["bottleneck_possible"]): modular
                                       claims no shared bottleneck in either basis, so that stays inconclusive
    both inconclusive                  inconclusive
A basis that was not measured does not vote.
"""
from __future__ import annotations

BASES_RULE = ("both bases agree: that verdict; both conclusive and different: inconclusive; one conclusive: that "
              "one, except modular beside a basis with a layer that could hold a bottleneck (inconclusive); both "
              "inconclusive: inconclusive; an unmeasured basis does not vote")


def _possible(layers: list[dict]) -> list[int]:
    return [r["layer"] for r in layers if r["decision"]["bottleneck_possible"]]


def across_bases(bases: dict[str, tuple[dict, list[dict]] | None]) -> dict:
    """{"verdict", "basis" (the deciding bases), "reason", "by_basis", "rule"} from {name: (model verdict, layer
    rows) or None}."""
    measured = {k: v for k, v in bases.items() if v is not None}
    by = {k: m["verdict"] for k, (m, _) in measured.items()}
    out = {"by_basis": by, "rule": BASES_RULE}
    conclusive = {k: v for k, v in by.items() if v != "inconclusive"}
    kinds = set(conclusive.values())
    if not conclusive:
        return {**out, "verdict": "inconclusive", "basis": sorted(by),
                "reason": f"no basis is conclusive ({', '.join(f'{k}: {v}' for k, v in by.items()) or 'none'})"}
    if len(kinds) > 1:
        return {**out, "verdict": "inconclusive", "basis": sorted(conclusive),
                "reason": f"the bases contradict each other ({', '.join(f'{k}: {v}' for k, v in by.items())})"}
    (verdict,) = kinds
    open_layers = {k: _possible(measured[k][1]) for k in by if k not in conclusive}
    blocking = {k: v for k, v in open_layers.items() if v}
    if verdict == "modular" and blocking:
        where = ", ".join(f"{k} layers {v}" for k, v in blocking.items())
        return {**out, "verdict": "inconclusive", "basis": sorted(by),
                "reason": f"{', '.join(sorted(conclusive))}: modular, but {where} could hold a shared bottleneck"}
    others = ", ".join(f"{k}: inconclusive" for k in open_layers) or "the only basis measured"
    agree = "every basis" if not open_layers and len(by) > 1 else f"{', '.join(sorted(conclusive))} ({others})"
    return {**out, "verdict": verdict, "basis": sorted(conclusive), "reason": f"{verdict} by {agree}"}
