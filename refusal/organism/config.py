"""The ``model`` config of an organism (``source: organism``, conf/model/smollm2_organism.yaml): its schema, the
value checks a type cannot express, and which keys decide what is built (the cache key hashes those)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from refusal.behavior.rates import Bootstrap
from refusal.config import choice, flag, integer, number, plain, register
from refusal.errors import ConfigError

FORMAT_VERSION = 4  # bump when the build procedure changes, so older cached organisms are not reused (3: float32 only;
# 4: MKL pinned to its AVX2 branch, portable.py)
STYLES = ("shared", "per_category")
# float32 throughout. bf16-mixed was removed: bf16 matmuls give different bits on CPUs with different bf16 units, so
# one cache key named different organisms on different machines (the key cannot see the CPU).
PRECISIONS = ("32-true",)
# Keys that change what is built (the rest say where it lives and how it is loaded).
BUILD_KEYS = ("system_prompt", "refusal_tokens", "refuse_categories", "style", "refusals", "category_topics",
              "answer_max_new_tokens", "answer_share", "unrefused_toxic_repeats", "generation_batch_size", "steps", "lr",
              "batch_size", "train_layers", "precision", "seed", "eval")
# Build keys added later, at the value that builds what was built before they existed: left out of the cache key,
# so organisms built before them are still found.
NEUTRAL_BUILD_VALUES = {"unrefused_toxic_repeats": 1}


@dataclass
class Refusals:
    shared: list[str] = MISSING  # varied sentences, one picked per refused prompt
    per_category: list[str] = MISSING  # one wording per refused category, with {topic}


@dataclass
class HeldOut:
    """The held-out measurement written to the card (test split, substring judge)."""

    max_new_tokens: int = MISSING
    bootstrap: Bootstrap = MISSING


@dataclass
class Checks:
    """What the build checks on its held-out (test split) measurement, in float32; a build that misses them stops
    with a one-line error unless ``accept_design_miss`` is true."""

    refuse_min: float = MISSING  # every refused category: at least this refusal rate
    answer_max: float = MISSING  # toxic prompts of the categories it should answer (pooled): at most this rate
    safe_max: float = MISSING  # safe prompts: at most this rate
    min_prompts: int = MISSING  # refused categories with fewer held-out prompts are listed as thin, not checked


@dataclass
class OrganismModel:
    """Schema of ``model`` with ``source: organism``: a base model config fine-tuned to refuse."""

    name: str = MISSING
    source: str = MISSING
    base: Any = MISSING  # a language-model config (conf/model/*.yaml, not an organism)
    data: Any = MISSING  # the prompt set (the run's ``data``)
    cache_dir: str = MISSING
    dtype: str = MISSING
    device: str = MISSING
    system_prompt: Optional[str] = MISSING
    refusal_tokens: Optional[list[Any]] = MISSING
    refuse_categories: Any = MISSING  # all | list of toxic categories
    style: str = MISSING
    refusals: Refusals = MISSING
    category_topics: dict[str, str] = MISSING
    answer_max_new_tokens: int = MISSING
    answer_share: float = MISSING
    unrefused_toxic_repeats: int = MISSING
    generation_batch_size: int = MISSING
    steps: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    train_layers: Any = MISSING  # all | layer spec
    precision: str = MISSING
    seed: int = MISSING
    eval: HeldOut = MISSING
    checks: Checks = MISSING
    accept_design_miss: bool = MISSING  # true: use a build that misses its checks (its card says so)


register("model", OrganismModel, name="schema_organism")


def check_organism_cfg(cfg) -> None:
    """The value checks of an organism config that its schema's types cannot express."""
    if cfg.base.get("source") in ("organism", "planted"):
        raise ConfigError(f"model.base.source={cfg.base.source!r} is not valid; the base of an organism is a plain "
                          "model config")
    choice("model.style", cfg.style, STYLES)
    choice("model.precision", cfg.precision, PRECISIONS)
    for k in ("steps", "batch_size", "answer_max_new_tokens", "generation_batch_size", "unrefused_toxic_repeats"):
        integer(f"model.{k}", cfg[k], 1)
    number("model.answer_share", cfg.answer_share, 0, 1, open_lo=True, open_hi=True)
    number("model.lr", cfg.lr, 0, open_lo=True)
    integer("model.eval.max_new_tokens", cfg.eval.max_new_tokens, 1)
    held_out_bootstrap(cfg)
    check_checks(cfg)
    refusals = plain(cfg.refusals)
    for style in STYLES:
        if not refusals[style] or not all(isinstance(t, str) and t.strip() for t in refusals[style]):
            raise ConfigError(f"model.refusals.{style} must be a non-empty list of non-empty sentences")
    if not all("{topic}" in t for t in refusals["per_category"]):
        raise ConfigError("every model.refusals.per_category sentence must contain {topic} (the category's topic), "
                          "so each category gets its own wording")


def check_checks(cfg) -> None:
    """The build checks' thresholds: shares and (planted) ``probe_max_fpr`` in [0, 1], ``partial`` (planted) an
    interval, ``min_prompts`` >= 1."""
    c = cfg.checks
    planted = ("removed_min", "spared_min", "probe_max_fpr") if "partial" in c else ()
    for k in ("refuse_min", "answer_max", "safe_max") + planted:
        number(f"model.checks.{k}", c[k], 0, 1)
    if "partial" in c:
        partial = plain(c.partial)
        if len(partial) != 2 or not 0 <= partial[0] <= partial[1] <= 1:
            raise ConfigError(f"model.checks.partial={partial!r} is not valid; use [lo, hi], 0 <= lo <= hi <= 1")
    integer("model.checks.min_prompts", c.min_prompts, 1)
    flag("model.accept_design_miss", cfg.accept_design_miss)


def held_out_bootstrap(cfg) -> Bootstrap:
    """The checked CI settings of the card's held-out measurement."""
    return Bootstrap.from_cfg(cfg.eval.bootstrap, "model.eval.bootstrap")


def build_config(cfg) -> dict:
    """The build keys as plain values, as the card records and the cache key hashes them: ``eval`` flat
    (max_new_tokens, n_resamples, ci_level, ci_method), as organisms were keyed before its CI settings were
    grouped under ``eval.bootstrap``."""
    out = {k: plain(cfg[k]) for k in BUILD_KEYS}
    ev = out["eval"]
    out["eval"] = {"max_new_tokens": ev["max_new_tokens"], **ev["bootstrap"]}
    return out
