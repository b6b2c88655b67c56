"""The decision rules that turn statistics into verdicts, and the final verdict that combines them.

Discovery rule (:class:`DecisionRule`, on the similarity statistics of refusal.circuit.summary):
    modular     the global permutation test rejects (p ≤ alpha)
                AND at least ``modular_min_pair_fraction`` of category pairs differ (BH-adjusted p ≤ alpha)
                AND the shared core carries < ``modular_max_core_mass`` of the circuits' feature |IE| mass
                (mean over categories)
                AND the error nodes carry ≤ ``max_error_mass`` of the circuits' |IE| mass (mean over categories)
    monolithic  the global test does not reject
                AND the shared core carries ≥ ``monolithic_min_core_mass`` of the mass
                AND the error nodes carry ≤ ``max_error_mass``
    mixed       anything else (e.g. categories differ but share a large core, or no difference was detected
                and no large core exists either, or the SAE features explain too little — the data cannot tell)

Why these defaults: alpha = 0.05 is the usual test level. "Most pairs" (≥ 0.5) keeps one odd category from
making refusal "modular". A rejected test alone is not enough for modular because with many prompts small
category modulations of one shared mechanism reject too, hence the core-mass cap: a core with < 25 % of the mass
means most of each circuit is category-specific. Failing to reject is not evidence of sameness, so monolithic also
needs positive evidence: a core carrying at least half of every circuit's mass on average. The gap between 0.25
and 0.5 is deliberately "mixed". The comparison and the tests use the SAE features only; when the error nodes
(what the SAEs fail to reconstruct) carry most of the effect (> 0.5), the features are not where the mechanism
is visible, and neither structural verdict is supported.

Transfer rule (:class:`TransferRule`, on the transfer-matrix statistics of refusal.evaluation.transfer; ρ's CI,
never "p > alpha", decides sameness):
    inconclusive  mean own-category drop ≤ 0, or the beats-random CI does not lie above 0, or (headroom-normalised
                  statistics) the own-category share's CI low is below min_own_share: rows that remove little of
                  their own category's refusal say nothing about how it is carried out; or ρ has no CI, or ρ's CI
                  crosses a margin (modular_max_transfer or monolithic_min_transfer)
    modular       p(S) ≤ alpha and ρ's CI high ≤ modular_max_transfer
    monolithic    ρ's CI low ≥ monolithic_min_transfer (the other categories lose at least that fraction of what
                  the own category loses, with confidence)
    mixed         ρ's CI lies strictly between the two margins

Both are descriptive evidence now, never the run's verdict (refusal.verdict.final): the discovery rule's answer is
reported as *recognition* (its permutation tests reject in any model whose topic features differ by category), and
the transfer matrix is circuits ablated whole across layers, not a bottleneck test per layer. The verdict is the
layer-resolved one of refusal.verdict.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from refusal.config import number
from refusal.errors import ConfigError

RULE = ("modular if global p <= alpha and the fraction of category pairs with BH-adjusted p <= alpha is >= "
        "modular_min_pair_fraction and mean core mass < modular_max_core_mass and mean error mass <= "
        "max_error_mass; monolithic if global p > alpha and mean core mass >= monolithic_min_core_mass and mean "
        "error mass <= max_error_mass; otherwise mixed")
TRANSFER_RULE = ("inconclusive if the mean own-category drop <= 0, the beats-random CI is not above 0 or (normalised) "
                 "the own-category share's CI low < min_own_share; modular if "
                 "p(S) <= alpha and the transfer ratio's CI high <= modular_max_transfer; monolithic if its CI low >= "
                 "monolithic_min_transfer; mixed if its CI lies strictly between the two; otherwise (no CI, or a CI "
                 "across a margin) inconclusive")


def _check_fractions(rule, prefix: str) -> None:
    """Every threshold of a rule is a number in [0, 1]."""
    for name, v in asdict(rule).items():
        number(f"{prefix}.{name}", v, 0, 1)


@dataclass(frozen=True)
class DecisionRule:
    alpha: float = 0.05
    modular_min_pair_fraction: float = 0.5
    modular_max_core_mass: float = 0.25
    monolithic_min_core_mass: float = 0.5
    max_error_mass: float = 0.5

    def __post_init__(self):
        _check_fractions(self, "circuit.statistics")

    def decide(self, global_p: float, pair_differs: list[bool], core_mass: float, error_mass: float) -> dict:
        rejects = global_p <= self.alpha
        pair_fraction = sum(pair_differs) / len(pair_differs) if pair_differs else float("nan")
        core_known = not math.isnan(core_mass)
        features_explain = not math.isnan(error_mass) and error_mass <= self.max_error_mass
        if rejects and pair_fraction >= self.modular_min_pair_fraction and core_known and features_explain \
                and core_mass < self.modular_max_core_mass:
            verdict = "modular"
        elif not rejects and core_known and features_explain and core_mass >= self.monolithic_min_core_mass:
            verdict = "monolithic"
        else:
            verdict = "mixed"
        return {"verdict": verdict, "rule": RULE, "thresholds": asdict(self),
                "evidence": {"global_p": global_p, "global_rejects": rejects, "pair_fraction_differ": pair_fraction,
                             "mean_core_mass": core_mass if core_known else None,
                             "mean_error_mass": None if math.isnan(error_mass) else error_mass}}


@dataclass(frozen=True)
class TransferRule:
    alpha: float = 0.05
    modular_max_transfer: float = 0.5
    monolithic_min_transfer: float = 0.8
    min_own_share: float = 0.5

    def __post_init__(self):
        _check_fractions(self, "evaluation.transfer")
        if self.modular_max_transfer > self.monolithic_min_transfer:
            raise ConfigError(f"evaluation.transfer.modular_max_transfer={self.modular_max_transfer} is above "
                              f"monolithic_min_transfer={self.monolithic_min_transfer}; it must not be")

    def decide(self, stats: dict) -> dict:
        diag, rho, p = stats["mean_diagonal"], stats["transfer_ratio"], stats["p_value"]
        ci = stats.get("ci", {})
        beat = ci.get("beats_random")
        beats_random = None if beat is None else bool(beat["low"] > 0)
        r = ci.get("transfer_ratio") or {}
        low, high = r.get("low", math.nan), r.get("high", math.nan)
        lo, hi = self.modular_max_transfer, self.monolithic_min_transfer
        own_low = (ci.get("mean_diagonal") or {}).get("low", math.nan)
        too_small = bool(stats.get("normalised")) and not own_low >= self.min_own_share
        if not diag > 0 or beats_random is False or too_small or not (math.isfinite(low) and math.isfinite(high)):
            verdict = "inconclusive"
        elif p <= self.alpha and high <= lo:
            verdict = "modular"
        elif low >= hi:
            verdict = "monolithic"
        elif lo < low and high < hi:
            verdict = "mixed"
        else:
            verdict = "inconclusive"
        return {"verdict": verdict, "rule": TRANSFER_RULE, "thresholds": asdict(self),
                "evidence": {"specificity": stats["specificity"], "p_value": p, "transfer_ratio": rho,
                             "transfer_ratio_ci": [low, high], "mean_diagonal": diag,
                             "own_share_ci_low": own_low if stats.get("normalised") else None,
                             "beats_random": beats_random}}
