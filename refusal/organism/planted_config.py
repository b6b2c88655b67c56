"""The ``model`` config of a planted organism (``source: planted``, conf/model/planted_*.yaml): its schema, the
value checks a type cannot express, and the keys that decide what is built (the cache key hashes those)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from refusal.config import choice, integer, number, plain, register
from refusal.errors import ConfigError
from refusal.organism.config import (Checks, HeldOut, Refusals, build_config, check_checks, check_organism_cfg,
                                     held_out_bootstrap)

ORGANISM_SOURCES = ("organism", "planted")  # model sources that refusal.organism builds (fine-tuned, planted)
DESIGNS = ("monolithic", "modular", "mixed", "gated")
ANSWER_TARGETS = ("distribution", "greedy")  # what a base-answer example teaches (refusal/organism/finetune.py)
PLANTED_BUILD_KEYS = ("system_prompt", "refusal_tokens", "design", "categories", "refusals", "category_topics",
                      "share", "adapters", "masks", "answer_target", "answer_max_new_tokens", "answer_share",
                      "unrefused_toxic_repeats", "generation_batch_size", "steps", "lr", "batch_size", "seed", "eval")


@dataclass
class PlantedChecks(Checks):
    """The behaviour checks and the design's ablation checks (refusal/organism/checks.py)."""

    removed_min: float = MISSING  # zeroing an adapter removes at least this share of its categories' refusal rate
    spared_min: float = MISSING  # ... and every other refused category keeps at least this share of its rate
    partial: list[float] = MISSING  # mixed: [lo, hi], the score share of a category's refusal one adapter leaves
    probe_max_fpr: float = MISSING  # selective designs, before training: a probe must catch refuse_min of each
    # gate's categories at this false-alarm rate on the other toxic categories (refusal/organism/separability.py)


@dataclass
class PlantedHeldOut(HeldOut):
    """The ground-truth measurement: a response is a planted refusal iff it begins with the first
    ``opening_words`` words of one of the design's refusal sentences (refusal.behavior.judge.OpeningJudge)."""

    opening_words: int = MISSING


@dataclass
class Adapters:
    """Where the planted adapters sit: a rank-``rank`` update of ``module`` in each of ``layers`` (for ``mlp``:
    ``rank`` gated units per adapter)."""

    layers: Any = MISSING  # layer spec (int, list, "a-b", "mid", negatives from the end)
    module: str = MISSING  # a bias-free linear module of each decoder layer (e.g. mlp.down_proj), or mlp (units)
    rank: int = MISSING
    energy_weight: float = MISSING  # penalty on the base model's residual energy along what they write (energy.py)


@dataclass
class Masks:
    """Adapter dropout while training designs with several adapters: each train prompt appears ``per_prompt``
    times, each time with every adapter on (probability ``all_on``) or a random half of them, and its target is
    what the design says that set of adapters does."""

    per_prompt: int = MISSING
    all_on: float = MISSING


@dataclass
class PlantedModel:
    """Schema of ``model`` with ``source: planted``: a base model whose refusal is planted in low-rank adapters."""

    name: str = MISSING
    source: str = MISSING
    base: Any = MISSING  # a language-model config (conf/model/*.yaml, not an organism)
    data: Any = MISSING  # the prompt set (the run's ``data``)
    cache_dir: str = MISSING
    dtype: str = MISSING
    device: str = MISSING
    system_prompt: Optional[str] = MISSING
    refusal_tokens: Optional[list[Any]] = MISSING
    design: str = MISSING  # monolithic | modular | mixed | gated
    categories: Any = MISSING  # all | list: the refused toxic categories
    refusals: Refusals = MISSING
    category_topics: dict[str, str] = MISSING
    share: float = MISSING  # mixed: the share of each category's refusal the shared adapter carries
    adapters: Adapters = MISSING
    masks: Masks = MISSING
    answer_target: str = MISSING  # distribution | greedy
    answer_max_new_tokens: int = MISSING
    answer_share: float = MISSING
    unrefused_toxic_repeats: int = MISSING
    generation_batch_size: int = MISSING
    steps: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    seed: int = MISSING
    eval: PlantedHeldOut = MISSING
    checks: PlantedChecks = MISSING
    accept_design_miss: bool = MISSING


register("model", PlantedModel, name="schema_planted")


def check_planted_cfg(cfg) -> None:
    """The value checks of a planted organism config that its schema's types cannot express."""
    if cfg.base.get("source") in ORGANISM_SOURCES:
        raise ConfigError(f"model.base.source={cfg.base.source!r} is not valid; the base of an organism is a plain "
                          "model config")
    choice("model.design", cfg.design, DESIGNS)
    choice("model.answer_target", cfg.answer_target, ANSWER_TARGETS)
    for k in ("steps", "batch_size", "answer_max_new_tokens", "generation_batch_size", "adapters.rank",
              "masks.per_prompt", "eval.max_new_tokens", "eval.opening_words", "unrefused_toxic_repeats"):
        integer(f"model.{k}", OmegaConf.select(cfg, k), 1)
    number("model.answer_share", cfg.answer_share, 0, 1, open_lo=True, open_hi=True)
    number("model.share", cfg.share, 0, 1, open_lo=True, open_hi=True)
    number("model.masks.all_on", cfg.masks.all_on, 0, 1)
    number("model.lr", cfg.lr, 0, open_lo=True)
    number("model.adapters.energy_weight", cfg.adapters.energy_weight, 0)
    held_out_bootstrap(cfg)
    check_checks(cfg)
    refusals = plain(cfg.refusals)
    key = "per_category" if cfg.design in ("modular", "mixed") else "shared"
    if not refusals[key] or not all(isinstance(t, str) and t.strip() for t in refusals[key]):
        raise ConfigError(f"model.refusals.{key} must be a non-empty list of non-empty sentences")
    if key == "per_category" and not all("{topic}" in t for t in refusals[key]):
        raise ConfigError("every model.refusals.per_category sentence must contain {topic} (the category's topic)")


def planted_build_config(cfg) -> dict:
    """The build keys as plain values, as the card records and the cache key hashes them."""
    return {k: plain(cfg[k]) for k in PLANTED_BUILD_KEYS}


def organism_build_config(cfg) -> dict:
    """The build keys of either organism source (``organism``: fine-tuned, ``planted``: adapters)."""
    return planted_build_config(cfg) if cfg.source == "planted" else build_config(cfg)


def check_any_organism_cfg(cfg) -> None:
    (check_planted_cfg if cfg.source == "planted" else check_organism_cfg)(cfg)
