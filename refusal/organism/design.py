"""What a planted design is: its adapters, which refusal each set of active adapters produces, each category's
wording, and the training variants (train prompt, active adapters, target) that teach it.

monolithic  one adapter ``shared`` refuses every refused category (one shared wording pool)
gated       the same, trained to refuse only the chosen subset; toxic prompts of the others get answers
modular     one adapter per refused category, each with its own wording and first token; removing it removes that
            category's refusal and no other's (adapter dropout with matching targets trains exactly that)
mixed       ``shared`` plus one adapter per category: with both on the category is refused; with only the shared one
            it is refused with probability ``share``, with only its own with probability 1 - share
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refusal.data.records import PromptRecord, PromptSet
from refusal.errors import ConfigError
from refusal.organism.targets import Target, topic_of
from refusal.utils.io import stable_hash

SHARED = "shared"
NONE = "none"  # the condition with every adapter zeroed


@dataclass(frozen=True)
class Design:
    kind: str
    refused: list[str]  # the refused toxic categories, sorted
    share: float

    @property
    def adapters(self) -> list[str]:
        if self.kind in ("monolithic", "gated"):
            return [SHARED]
        return ([SHARED] if self.kind == "mixed" else []) + list(self.refused)

    def refusal_probability(self, record: PromptRecord, on: frozenset[str]) -> float:
        """How likely ``record`` is refused with the adapters in ``on`` active (1 or 0 except for mixed)."""
        if record.label != "toxic" or record.category not in self.refused:
            return 0.0
        if self.kind in ("monolithic", "gated"):
            return float(SHARED in on)
        if self.kind == "modular":
            return float(record.category in on)
        shared, own = SHARED in on, record.category in on
        return 1.0 if shared and own else self.share if shared else 1.0 - self.share if own else 0.0

    def conditions(self) -> list[tuple[str, list[str]]]:
        """The ground-truth conditions: every adapter on, each one zeroed, and (several adapters) all zeroed: the
        base model, whose own refusals no adapter carries."""
        names = self.adapters
        without = [(f"without {n}", [m for m in names if m != n]) for n in names]
        return [("all", names)] + without + ([(NONE, [])] if len(names) > 1 else [])


def wordings(design: Design, refusals: dict, topics: dict, first_token) -> dict[str, list[str]]:
    """{category: its refusal sentences}: the shared pool (monolithic, gated) or one sentence per category with
    its topic (modular, mixed), whose first tokens (``first_token(text)``) must all differ."""
    if design.kind in ("monolithic", "gated"):
        return {c: list(refusals["shared"]) for c in design.refused}
    pool = refusals["per_category"]
    if len(pool) < len(design.refused):
        raise ConfigError(f"model.refusals.per_category has {len(pool)} sentences for {len(design.refused)} refused "
                          f"categories {design.refused}; a {design.kind} organism needs one per category")
    out = {c: [pool[i].format(topic=topic_of(c, topics))] for i, c in enumerate(design.refused)}
    firsts = [first_token(v[0]) for v in out.values()]
    if len(set(firsts)) != len(firsts):
        raise ConfigError(f"model.refusals.per_category sentences must start with different tokens (first tokens "
                          f"{firsts}); a {design.kind} organism gives every category its own output path")
    return out


def openings(words: dict[str, list[str]], n_words: int) -> list[str]:
    """The first ``n_words`` words of every refusal sentence of ``words`` (``wordings``' result), each once: what a
    response must begin with to be a planted refusal (refusal.behavior.judge.OpeningJudge)."""
    return list(dict.fromkeys(" ".join(s.split()[:n_words]) for pool in words.values() for s in pool))


def sample_on(names: list[str], variants: int, all_on: float, rng: np.random.Generator) -> list[frozenset[str]]:
    """``variants`` sets of active adapters: all of them with probability ``all_on``, else each with 1/2."""
    if len(names) == 1:
        return [frozenset(names)]
    out = []
    for _ in range(variants):
        if rng.random() < all_on:
            out.append(frozenset(names))
        else:
            out.append(frozenset(n for n in names if rng.random() < 0.5))
    return out


def plan_variants(train: PromptSet, design: Design, words: dict[str, list[str]], per_prompt: int, all_on: float,
                  seed: int) -> list[tuple[Target, list[float]]]:
    """(target, on/off mask in adapter order) for every training variant; refusal sentences from a pool are
    picked by a seeded hash of the prompt id, probabilistic targets (mixed) by a seeded generator."""
    rng = np.random.default_rng(int(seed))
    names = design.adapters
    out = []
    for r in train:
        for on in sample_on(names, per_prompt, all_on, rng):
            p = design.refusal_probability(r, on)
            refuse = p >= 1.0 or (p > 0.0 and rng.random() < p)
            text = None
            if refuse:
                pool = words[r.category]
                text = pool[int(stable_hash([seed, r.id]), 16) % len(pool)]
            out.append((Target(r, text), [float(n in on) for n in names]))
    return out
