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

Transfer rule (:class:`TransferRule`, on the transfer-matrix statistics of refusal.evaluation.transfer):
    inconclusive  mean own-category drop ≤ 0, or the beats-random CI does not lie above 0
    modular       p(S) ≤ alpha and ρ ≤ modular_max_transfer
    monolithic    p(S) > alpha and ρ ≥ monolithic_min_transfer
    mixed         otherwise

Both are descriptive evidence now, never the run's verdict (refusal.verdict.final): the discovery rule's answer is
reported as *recognition* (its permutation tests reject in any model whose topic features differ by category), and
the transfer rule reads "p > alpha" as sameness. The verdict is the layer-resolved one of refusal.verdict.
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
TRANSFER_RULE = ("inconclusive if the mean own-category score drop <= 0 or the beats-random CI is not above 0; "
                 "modular if p(S) <= alpha and transfer ratio <= modular_max_transfer; monolithic if p(S) > alpha and "
                 "transfer ratio >= monolithic_min_transfer; otherwise mixed")


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

    def __post_init__(self):
        _check_fractions(self, "evaluation.transfer")
        if self.modular_max_transfer > self.monolithic_min_transfer:
            raise ConfigError(f"evaluation.transfer.modular_max_transfer={self.modular_max_transfer} is above "
                              f"monolithic_min_transfer={self.monolithic_min_transfer}; it must not be")

    def decide(self, stats: dict) -> dict:
        diag, rho, p = stats["mean_diagonal"], stats["transfer_ratio"], stats["p_value"]
        beat = stats.get("ci", {}).get("beats_random")
        beats_random = None if beat is None else bool(beat["low"] > 0)
        if not diag > 0 or beats_random is False:
            verdict = "inconclusive"
        elif p <= self.alpha and rho <= self.modular_max_transfer:
            verdict = "modular"
        elif p > self.alpha and rho >= self.monolithic_min_transfer:
            verdict = "monolithic"
        else:
            verdict = "mixed"
        return {"verdict": verdict, "rule": TRANSFER_RULE, "thresholds": asdict(self),
                "evidence": {"specificity": stats["specificity"], "p_value": p, "transfer_ratio": rho,
                             "mean_diagonal": diag, "beats_random": beats_random}}
