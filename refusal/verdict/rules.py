"""The layer verdict (DESIGN §4): decisions by effect sizes with CIs against equivalence margins, never "p > alpha".

Reads the evidence of refusal.verdict.evidence. r_c = residual refusal of counted category c under the shared
ablation, [lo_c, hi_c] its CI. Each counted category falls in one region (disjoint):
    bottleneck   hi_c ≤ bottleneck_max_residual          the shared set removes most of c's refusal
    small        lo_c ≥ no_bottleneck_min_residual       the shared set removes little of it
    partial      bottleneck_max_residual < lo_c and hi_c < no_bottleneck_min_residual
                                                         the shared set carries a measured fraction, neither
    undecided    anything else (the CI straddles a threshold, or is undefined)

The categories *dissociate* when the mean dissociation CI low ≥ dissociation_margin and ≥ min_pair_fraction of the
pairs have CI low ≥ dissociation_margin; they *do not dissociate* when dissociation was measured and the mean
dissociation CI lies within ±dissociation_margin (low ≥ −dissociation_margin and high ≤ dissociation_margin).
*Each category's own set spares the others* when for every ordered pair (a, b), a ≠ b, of counted categories the
cross drop D[a, b] (drop matrix, rows: the category whose own set is ablated) has CI high with 1 − high ≥
no_bottleneck_min_residual (a's set leaves at least that share of b's refusal; an undefined entry or an unmeasured
matrix fails).

Preconditions (else inconclusive): ≥ 2 counted categories (headroom CI above 0; a category without headroom is not
counted), every counted category and the safe prompts with ≥ min_prompts prompts. Then, checked in this order:
    monolithic   every counted category is bottleneck, AND safe KL CI high ≤ max_kl, AND the random sets of the
                 same size were measured and every counted category's random-gap CI low > 0 (paired difference
                 r_c(random) − r_c: the shared set beats the floor), AND, when induced was measured, its CI
                 low ≥ min_induced, AND the categories do not dissociate (the shared set is one mechanism, not a
                 union of category-specific ones)
    modular      the categories dissociate, AND no shared carrier: every counted category is small, OR each
                 category's own set spares the others
    mixed        every counted category is partial, AND safe KL CI high ≤ max_kl, AND every random-gap CI low > 0,
                 AND the categories dissociate
    inconclusive anything else: CIs too wide (undecided regions), categories in different regions whose own sets do
                 not spare each other, a bottleneck whose ablation disturbs safe prompts (KL), does no better than
                 random sets or whose categories' own sets dissociate without sparing each other, dissociation not
                 measured or neither established nor excluded, too few categories or prompts

Choices: a pooled top-k set can look like a bottleneck without being one. With separate, small per-category
mechanisms (say one feature per category, 3 categories) the pooled top-k with k ≥ 3 is the union of them and removes
every category's refusal; only the categories' own sets of the same size tell the cases apart. A true bottleneck has
the top attribution in every category, so every category's own set holds it and removes every category's refusal (D
≈ 1 everywhere, dissociation ≈ 0; recognition features feeding it cannot push the index up, as each term is capped
near 1); a union's parts each remove only their own category's (D ≈ identity, dissociation ≈ 1). Hence monolithic
must positively establish no dissociation, and modular may rest on the own sets sparing each other however much the
pooled set removes (the cross-drop route reuses no_bottleneck_min_residual: an own set leaving that share of another
category's refusal carries no more of it than a "small" shared set would). Modular is checked before mixed: a pooled
set that removes part of every category's refusal while every category's own set spares the others is again a union
of category-specific parts (a real shared part ranks high in every category, so it sits in every own set and its
cross drops exceed 1 − no_bottleneck_min_residual whenever it carries more than that share). The KL and random-floor
conditions guard claims that the shared ablation *removes* refusal (monolithic, mixed); modular rests on a contrast
between categories, which a generally damaging ablation cannot fake, so it needs neither. Default thresholds: a
bottleneck removes ≥ 80 % of every category's refusal (DESIGN's "most"); a pooled set in a model with C separate
mechanisms still removes about 1/C of each category's refusal, so "small" starts at a residual of 0.5; the safe-KL
cap 0.1 is the refusal-direction criterion of DESIGN §3; patching must induce at least half the toxic headroom.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from refusal.config import integer, number
from refusal.errors import ConfigError

RULE = ("per counted category (headroom CI above 0): bottleneck if the residual-refusal CI high <= "
        "bottleneck_max_residual, small if its CI low >= no_bottleneck_min_residual, partial if the CI lies strictly "
        "between them, else undecided; the categories dissociate if the mean dissociation CI low >= "
        "dissociation_margin and a fraction >= min_pair_fraction of pairs has CI low >= dissociation_margin; they "
        "do not dissociate if dissociation was measured and the mean dissociation CI lies within "
        "±dissociation_margin; each category's own set spares the others if for every ordered pair (a, b), a != b, "
        "of counted categories 1 - (cross drop D[a, b] CI high) >= no_bottleneck_min_residual (undefined: fails); "
        "inconclusive if < 2 counted categories or fewer than min_prompts prompts in a counted category or the safe "
        "set; else, in this order: monolithic if every category is bottleneck, safe-KL CI high <= max_kl, every "
        "random-gap CI low > 0, (when measured) induced-fraction CI low >= min_induced and the categories do not "
        "dissociate; modular if the categories dissociate and either every category is small or each category's "
        "own set spares the others; mixed if every category is partial, safe-KL CI high <= max_kl, every random-gap "
        "CI low > 0 and the categories dissociate; otherwise inconclusive")
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
        "bottleneck_possible" (the preconditions hold, every counted category's residual CI reaches down to the
        bottleneck region and the categories' own sets do not spare each other: a bottleneck is not excluded),
        "shared_excluded" (the preconditions hold and no shared carrier: every category is small or each category's
        own set spares the others), "dissociation_pair_fraction" (of counted pairs with CI low >=
        dissociation_margin; None: not measured) and "cross_drop_max" (the largest cross-drop CI high D[a, b] over
        ordered pairs a != b of counted categories; None: not measured, undefined or < 2 counted categories).

        The verdict (module docstring, RULE): inconclusive unless the preconditions hold; then monolithic if every
        category is bottleneck, the safe KL and the random floor hold, induction holds when measured and the
        categories do not dissociate (mean dissociation CI within ±dissociation_margin); else modular if they
        dissociate and either every category is small or each category's own set spares the others (every cross
        drop CI high <= 1 - no_bottleneck_min_residual); else mixed if every category is partial, the safe KL and
        the random floor hold and they dissociate; else inconclusive."""
        counted = [p for p in evidence["per_category"] if p["counted"]]
        regions = {p["category"]: self.region(p["residual"]) for p in counted}
        c = _Conditions(self, evidence, counted, regions)
        verdict = c.verdict()
        lows = [None if p["residual"] is None else p["residual"]["low"] for p in counted]
        reach = bool(lows) and all(lo is None or lo <= self.bottleneck_max_residual for lo in lows)
        return {"verdict": verdict, "reasons": c.reasons + [c.because(verdict)], "thresholds": asdict(self),
                "rule": RULE, "regions": regions, "counted": list(regions),
                "bottleneck_possible": c.ready and reach and not c.spared,
                "shared_excluded": c.ready and c.no_carrier, "dissociation_pair_fraction": c.pair_fraction,
                "cross_drop_max": c.cross_max}


def _entry(matrix: dict, a: str, b: str) -> dict | None:
    """The triple D[a, b] of a drop matrix (rows and columns are category names); None: a or b not in it."""
    if a not in matrix["rows"] or b not in matrix["columns"]:
        return None
    i, j = matrix["rows"].index(a), matrix["columns"].index(b)
    return {k: matrix[k][i][j] for k in ("estimate", "low", "high")}


class _Conditions:
    """Every condition of the rule on one layer's evidence, with a plain-English line each."""

    def __init__(self, rule: LayerRule, ev: dict, counted: list[dict], regions: dict):
        self.rule, self.ev, self.counted, self.regions, self.reasons = rule, ev, counted, regions, []
        self.pair_fraction = None  # of counted pairs with dissociation CI low >= margin; None: not measured
        self.cross_max = None  # the largest cross-drop CI high among counted ordered pairs; None: not measured
        self.ready = self._preconditions()
        self._regions_line()
        self.kl = self._kl()
        self.random = self._random()
        self.induced = self._induced()
        self.dissociates = self._dissociation()
        self.no_dissociation = self._no_dissociation()
        self.spared = self._cross_drops()
        self.no_carrier = self._no_carrier()

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
            return self._say(False, "the categories dissociate: dissociation not measured (needs per-category sets "
                                    "and >= 2 counted categories)")
        above = sum(_ge(p["low"], m) for p in d["pairs"])
        frac = self.pair_fraction = above / len(d["pairs"])
        ok = _ge(d["mean"]["low"], m) and frac >= self.rule.min_pair_fraction
        return self._say(ok, f"the categories dissociate: mean index {_ci(d['mean'])}, CI low >= {m}; "
                             f"{above}/{len(d['pairs'])} pairs with CI low >= {m} (need a fraction >= "
                             f"{self.rule.min_pair_fraction})")

    def _no_dissociation(self) -> bool:
        d, m = self.ev["dissociation"], self.rule.dissociation_margin
        what = "the shared set is one mechanism, not a union of category-specific ones"
        if d is None:
            return self._say(False, f"{what}: dissociation not measured, so it cannot be excluded")
        ok = _ge(d["mean"]["low"], -m) and _le(d["mean"]["high"], m)
        return self._say(ok, f"{what}: mean dissociation CI {_ci(d['mean'])} {'within' if ok else 'not within'} "
                             f"±{m} (CI low >= {-m} and high <= {m})")

    def _cross_drops(self) -> bool:
        m, names = self.rule.no_bottleneck_min_residual, [p["category"] for p in self.counted]
        what = (f"each category's own set spares the others: for every ordered pair (a, b) of counted categories, "
                f"a's set leaves >= {m} of b's refusal (cross drop D[a, b] CI high <= 1 - {m})")
        matrix = self.ev["drop_matrix"]
        if matrix is None or len(names) < 2:
            return self._say(False, f"{what}: the drop matrix was not measured or < 2 counted categories")
        drops = {(a, b): _entry(matrix, a, b) for a in names for b in names if a != b}
        highs = {k: None if t is None else t["high"] for k, t in drops.items()}
        undefined = [f"{a}->{b}" for (a, b), h in highs.items() if h is None]
        if undefined:
            return self._say(False, f"{what}: undefined for {', '.join(undefined)}")
        a, b = max(highs, key=highs.get)
        self.cross_max = highs[a, b]
        return self._say(1 - self.cross_max >= m, f"{what}: largest {a}->{b} {_ci(drops[a, b])}")

    def _no_carrier(self) -> bool:
        m = self.rule.no_bottleneck_min_residual
        if self.all_in("small"):
            return self._say(True, f"no shared carrier: every counted category is small (residual CI low >= {m})")
        if self.spared:
            return self._say(True, "no shared carrier: each category's own set spares the others, so whatever the "
                                   "shared set removes is a union of category-specific parts")
        return self._say(False, "no shared carrier: neither is every counted category small nor does each "
                                "category's own set spare the others")

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
        if self.all_in("bottleneck") and self.kl and self.random and self.induced and self.no_dissociation:
            return "monolithic"
        if self.dissociates and self.no_carrier:
            return "modular"
        if self.all_in("partial") and self.kl and self.random and self.dissociates:
            return "mixed"
        return "inconclusive"

    def because(self, verdict: str) -> str:
        if verdict == "modular":
            route = "every category is small" if self.all_in("small") else "each category's own set spares the others"
            return f"verdict modular: every condition of modular holds (no shared carrier: {route})"
        if verdict != "inconclusive":
            return f"verdict {verdict}: every condition of {verdict} holds"
        if not self.ready:
            return "verdict inconclusive: too few counted categories or prompts"
        kinds = sorted(set(self.regions.values()))
        needs = {"bottleneck": (("safe KL", self.kl), ("beats random sets", self.random),
                                ("induces refusal", self.induced), ("no dissociation", self.no_dissociation)),
                 "partial": (("safe KL", self.kl), ("beats random sets", self.random),
                             ("dissociation", self.dissociates))}
        if kinds == ["small"]:
            return "verdict inconclusive: every category is small, but these conditions fail: ['dissociation']"
        modular = [name for name, ok in (("dissociation", self.dissociates),
                                         ("own sets spare the others", self.spared)) if not ok]
        nor = (f"modular (the categories dissociate and each category's own set spares the others) fails on: "
               f"{modular}")
        if len(kinds) == 1 and kinds[0] in needs:
            failed = [name for name, ok in needs[kinds[0]] if not ok]
            return f"verdict inconclusive: every category is {kinds[0]}, but these conditions fail: {failed}; {nor}"
        return (f"verdict inconclusive: the categories' residual regions are {kinds}, not all bottleneck, all "
                f"small or all partial, and {nor}. {self.ev['resolution']['sentence']}")
