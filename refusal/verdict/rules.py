"""The layer verdict (DESIGN §4): decisions by effect sizes with CIs against equivalence margins, never "p > alpha".

Reads the evidence of refusal.verdict.evidence. r_c = residual refusal of counted category c under the shared
ablation, [lo_c, hi_c] its CI. Each counted category falls in one region (disjoint):
    bottleneck   hi_c ≤ bottleneck_max_residual          the shared set removes most of c's refusal
    small        lo_c ≥ no_bottleneck_min_residual       the shared set removes little of it
    partial      bottleneck_max_residual < lo_c and hi_c < no_bottleneck_min_residual
                                                         the shared set carries a measured fraction, neither
    undecided    anything else (the CI straddles a threshold, or is undefined)

Preconditions (else inconclusive): ≥ 2 counted categories (headroom CI above 0; a category without headroom is not
counted), every counted category and the safe prompts with ≥ min_prompts prompts.
    monolithic   every counted category is bottleneck, AND safe KL CI high ≤ max_kl, AND the random sets of the
                 same size were measured and every counted category's random-gap CI low > 0 (paired difference
                 r_c(random) − r_c: the shared set beats the floor), AND, when induced was measured, its CI
                 low ≥ min_induced
    modular      every counted category is small, AND the categories dissociate: mean dissociation CI low ≥
                 dissociation_margin and ≥ min_pair_fraction of the pairs have CI low ≥ dissociation_margin
    mixed        every counted category is partial, AND safe KL CI high ≤ max_kl, AND every random-gap CI low > 0,
                 AND the categories dissociate (as for modular)
    inconclusive anything else: CIs too wide (undecided regions), categories in different regions, a bottleneck
                 whose ablation disturbs safe prompts (KL) or does no better than random sets, no dissociation
                 beside a small or partial shared part, too few categories or prompts

Choices: the KL and random-floor conditions guard claims that the shared ablation *removes* refusal (monolithic,
mixed); modular rests on the shared set *not* removing it plus a contrast between categories, which a generally
damaging ablation cannot fake, so it needs neither. Monolithic does not require the dissociation index to be
equivalent to 0: at a layer with a bottleneck, category-specific sets that hurt their own category more are
recognition features feeding the bottleneck (DESIGN §4: recognition alone says nothing); whether the index is within
±dissociation_margin is reported as a note. Default thresholds: a bottleneck removes ≥ 80 % of every category's
refusal (DESIGN's "most"); a pooled set in a model with C separate mechanisms still removes about 1/C of each
category's refusal, so "small" starts at a residual of 0.5; the safe-KL cap 0.1 is the refusal-direction
criterion of DESIGN §3; patching must induce at least half the toxic headroom.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from refusal.config import integer, number
from refusal.errors import ConfigError

RULE = ("per counted category (headroom CI above 0): bottleneck if the residual-refusal CI high <= "
        "bottleneck_max_residual, small if its CI low >= no_bottleneck_min_residual, partial if the CI lies strictly "
        "between them, else undecided; inconclusive if < 2 counted categories or fewer than min_prompts prompts in "
        "a counted category or the safe set; monolithic if every category is bottleneck, safe-KL CI high <= max_kl, "
        "every random-gap CI low > 0 and (when measured) induced-fraction CI low >= min_induced; modular if every "
        "category is small and the categories dissociate (mean dissociation CI low >= dissociation_margin and a "
        "fraction >= min_pair_fraction of pairs with CI low >= dissociation_margin); mixed if every category is "
        "partial, safe-KL CI high <= max_kl, every random-gap CI low > 0 and the categories dissociate; otherwise "
        "inconclusive")
VERDICTS = ("monolithic", "modular", "mixed", "inconclusive")
REGIONS = ("bottleneck", "small", "partial", "undecided")


def _f(x) -> str:
    return "undefined" if x is None else f"{x:.3g}"


def _ci(t: dict | None) -> str:
    return "not measured" if t is None else f"{_f(t['estimate'])} [{_f(t['low'])}, {_f(t['high'])}]"


def _le(x, bound) -> bool:
    return x is not None and x <= bound


def _ge(x, bound) -> bool:
    return x is not None and x >= bound


@dataclass(frozen=True)
class LayerRule:
    """Thresholds of the layer verdict (module docstring); every value checked on construction."""
    bottleneck_max_residual: float = 0.2
    no_bottleneck_min_residual: float = 0.5
    max_kl: float = 0.1
    min_induced: float = 0.5
    dissociation_margin: float = 0.3
    min_pair_fraction: float = 0.5
    min_prompts: int = 5

    def __post_init__(self):
        for name in ("bottleneck_max_residual", "no_bottleneck_min_residual", "min_induced", "min_pair_fraction"):
            number(f"verdict.{name}", getattr(self, name), 0, 1)
        number("verdict.max_kl", self.max_kl, 0)
        number("verdict.dissociation_margin", self.dissociation_margin, 0, 1, open_lo=True)
        integer("verdict.min_prompts", self.min_prompts, 2)
        if not self.bottleneck_max_residual < self.no_bottleneck_min_residual:
            raise ConfigError(f"verdict.bottleneck_max_residual={self.bottleneck_max_residual} is not below "
                              f"no_bottleneck_min_residual={self.no_bottleneck_min_residual}; it must be")

    def region(self, residual: dict | None) -> str:
        """The region of one category's residual-refusal triple (module docstring)."""
        lo, hi = (None, None) if residual is None else (residual["low"], residual["high"])
        if _le(hi, self.bottleneck_max_residual):
            return "bottleneck"
        if _ge(lo, self.no_bottleneck_min_residual):
            return "small"
        if lo is not None and hi is not None and lo > self.bottleneck_max_residual \
                and hi < self.no_bottleneck_min_residual:
            return "partial"
        return "undecided"

    def decide(self, evidence: dict) -> dict:
        """{"verdict", "reasons", "thresholds", "rule"} plus "regions" (counted category -> region), "counted",
        "bottleneck_possible" (the preconditions hold and every counted category's residual CI reaches down to the
        bottleneck region: a bottleneck is not excluded), "shared_excluded" (the preconditions hold and every category is small) and
        "dissociation_pair_fraction" (of counted pairs with CI low >= dissociation_margin; None: not measured)."""
        counted = [p for p in evidence["per_category"] if p["counted"]]
        regions = {p["category"]: self.region(p["residual"]) for p in counted}
        c = _Conditions(self, evidence, counted, regions)
        verdict = c.verdict()
        lows = [None if p["residual"] is None else p["residual"]["low"] for p in counted]
        possible = c.ready and bool(lows) and all(lo is None or lo <= self.bottleneck_max_residual for lo in lows)
        return {"verdict": verdict, "reasons": c.reasons + [c.because(verdict)], "thresholds": asdict(self),
                "rule": RULE, "regions": regions, "counted": list(regions), "bottleneck_possible": possible,
                "shared_excluded": c.ready and c.all_in("small"), "dissociation_pair_fraction": c.pair_fraction}


class _Conditions:
    """Every condition of the rule on one layer's evidence, with a plain-English line each."""

    def __init__(self, rule: LayerRule, ev: dict, counted: list[dict], regions: dict):
        self.rule, self.ev, self.counted, self.regions, self.reasons = rule, ev, counted, regions, []
        self.pair_fraction = None  # of counted pairs with dissociation CI low >= margin; None: not measured
        self.ready = self._preconditions()
        self._regions_line()
        self.kl = self._kl()
        self.random = self._random()
        self.induced = self._induced()
        self.dissociates = self._dissociation()

    def _say(self, ok: bool, text: str) -> bool:
        self.reasons.append(f"{'holds' if ok else 'fails'}: {text}")
        return ok

    def _preconditions(self) -> bool:
        r = self.rule
        left_out = [f"{p['category']} ({p['n']} prompts)" if p.get("thin") else
                    f"{p['category']} (headroom {_ci(p['headroom'])})" for p in self.ev["per_category"]
                    if not p["counted"]]
        ok = self._say(len(self.counted) >= 2, f"{len(self.counted)} counted categories (need >= 2; headroom CI "
                       f"above 0 and >= {self.ev.get('min_prompts')} prompts); not counted: "
                       f"{', '.join(left_out) or 'none'}")
        few = {p["category"]: p["n"] for p in self.counted if p["n"] < r.min_prompts}
        n_safe = self.ev["n_prompts"]["safe"]
        enough = self._say(not few and n_safe >= r.min_prompts,
                           f">= {r.min_prompts} prompts per counted category and safe set (safe {n_safe}; "
                           f"too few: {few or 'none'}; the evidence counts only categories with >= its min_prompts)")
        return ok and enough

    def _kl(self) -> bool:
        kl = self.ev["safe_kl"]
        return self._say(_le(kl["high"], self.rule.max_kl),
                         f"mean safe KL of the shared ablation {_ci(kl)}: CI high <= {self.rule.max_kl}")

    def _random(self) -> bool:
        if not self.ev["n_random_sets"]:
            return self._say(False, "random sets of the shared set's size were not measured (the floor)")
        gaps = {p["category"]: p["random_gap"] for p in self.counted}
        worst = min(gaps, key=lambda k: gaps[k]["low"] if gaps[k]["low"] is not None else -1e300, default=None)
        ok = bool(gaps) and all(g["low"] is not None and g["low"] > 0 for g in gaps.values())
        return self._say(ok, f"the shared set beats random sets of its size in every counted category (random "
                             f"residual − shared residual, CI low > 0; lowest: {worst} {_ci(gaps.get(worst))})")

    def _induced(self) -> bool:
        ind = self.ev["induced_fraction"]
        if ind is None:
            self.reasons.append("note: induced refusal was not measured; monolithic does not require it then")
            return True
        return self._say(_ge(ind["low"], self.rule.min_induced),
                         f"patching the shared set into safe prompts induces {_ci(ind)} of the toxic headroom: "
                         f"CI low >= {self.rule.min_induced}")

    def _dissociation(self) -> bool:
        d, m = self.ev["dissociation"], self.rule.dissociation_margin
        if d is None:
            return self._say(False, "dissociation not measured (per-category sets, >= 2 counted categories)")
        above = sum(_ge(p["low"], m) for p in d["pairs"])
        frac = self.pair_fraction = above / len(d["pairs"])
        ok = _ge(d["mean"]["low"], m) and frac >= self.rule.min_pair_fraction
        zero = d["mean"]["low"] is not None and d["mean"]["high"] is not None and -m <= d["mean"]["low"] \
            and d["mean"]["high"] <= m
        self.reasons.append(f"note: the mean dissociation CI {'lies' if zero else 'does not lie'} within ±{m} "
                            f"(equivalent to no dissociation: {'yes' if zero else 'no'})")
        return self._say(ok, f"the categories dissociate: mean index {_ci(d['mean'])}, CI low >= {m}; "
                             f"{above}/{len(d['pairs'])} pairs with CI low >= {m} (need a fraction >= "
                             f"{self.rule.min_pair_fraction})")

    def _regions_line(self):
        parts = [f"{p['category']} {_ci(p['residual'])} {self.regions[p['category']]}" for p in self.counted]
        self.reasons.append(f"residual refusal under the shared ablation (bottleneck if CI high <= "
                            f"{self.rule.bottleneck_max_residual}, small if CI low >= "
                            f"{self.rule.no_bottleneck_min_residual}): {'; '.join(parts) or 'no counted category'}")

    def all_in(self, region: str) -> bool:
        return bool(self.regions) and all(v == region for v in self.regions.values())

    def verdict(self) -> str:
        if not self.ready:
            return "inconclusive"
        if self.all_in("bottleneck") and self.kl and self.random and self.induced:
            return "monolithic"
        if self.all_in("small") and self.dissociates:
            return "modular"
        if self.all_in("partial") and self.kl and self.random and self.dissociates:
            return "mixed"
        return "inconclusive"

    def because(self, verdict: str) -> str:
        if verdict != "inconclusive":
            return f"verdict {verdict}: every condition of {verdict} holds"
        if not self.ready:
            return "verdict inconclusive: too few counted categories or prompts"
        kinds = sorted(set(self.regions.values()))
        needs = {"bottleneck": (("safe KL", self.kl), ("beats random sets", self.random),
                                ("induces refusal", self.induced)),
                 "small": (("dissociation", self.dissociates),),
                 "partial": (("safe KL", self.kl), ("beats random sets", self.random),
                             ("dissociation", self.dissociates))}
        if len(kinds) == 1 and kinds[0] in needs:
            failed = [name for name, ok in needs[kinds[0]] if not ok]
            return f"verdict inconclusive: every category is {kinds[0]}, but these conditions fail: {failed}"
        return (f"verdict inconclusive: the categories' residual regions are {kinds}, not all bottleneck, all "
                f"small or all partial. {self.ev['resolution']['sentence']}")
