"""Schemas of the ``behavior`` group (conf/behavior/default.yaml) and its ``judge`` subgroup
(conf/behavior/judge/*.yaml, also used as ``evaluation.judge``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from refusal.behavior.rates import Bootstrap
from refusal.config import register


@dataclass
class SubstringJudgeConfig:
    _target_: str = MISSING
    substrings: list[str] = MISSING


@dataclass
class ClassifierJudgeConfig:
    _target_: str = MISSING
    path: str = MISSING
    positive_label: Any = MISSING  # a label name or its index
    template: Optional[str] = MISSING
    threshold: float = MISSING
    batch_size: int = MISSING
    max_length: int = MISSING
    device: str = MISSING


@dataclass
class BehaviorConfig:
    judge: Any = MISSING  # one of the judge schemas above
    split: str = MISSING
    max_new_tokens: int = MISSING
    batch_size: int = MISSING
    bootstrap: Bootstrap = MISSING
    seed: int = MISSING  # bootstrap seed
    system_prompt: Optional[str] = MISSING
    refusal_tokens: Optional[list[Any]] = MISSING


register("behavior", BehaviorConfig)
register("behavior/judge", SubstringJudgeConfig, name="schema_substring")
register("behavior/judge", ClassifierJudgeConfig, name="schema_classifier")
