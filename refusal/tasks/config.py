"""Schemas of the entry points' own keys (conf/train.yaml, conf/discover.yaml, conf/evaluate.yaml; collect.yaml
extends train.yaml). The config groups are typed by their packages' schemas; here they are only named, so a
misspelt top-level key is refused by Hydra."""
from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from refusal.config import register


@dataclass
class _Task:
    task_name: str = MISSING
    tags: List[str] = MISSING
    seed: int = MISSING
    optimized_metric: Optional[str] = MISSING  # the logged metric the entry point returns (what a sweeper optimises)
    paths: Any = MISSING
    model: Any = None  # null: discover/evaluate take the train run's
    data: Any = None
    logger: Any = None


@dataclass
class TrainSchema(_Task):
    ckpt_path: Optional[str] = MISSING
    checkpoint_every_n_steps: int = MISSING
    activations: Any = MISSING
    behavior: Any = None  # null (~behavior): no baseline measurement
    sae: Any = MISSING
    trainer: Any = MISSING


@dataclass
class DiscoverSchema(_Task):
    train_dir: Optional[str] = MISSING
    sae_dirs: Any = MISSING  # a list of SAELens dirs, or null
    circuit: Any = MISSING


@dataclass
class EvaluateSchema(_Task):
    train_dir: Optional[str] = MISSING
    discover_dir: Optional[str] = MISSING
    evaluation: Any = MISSING


for _name, _node in (("train", TrainSchema), ("discover", DiscoverSchema), ("evaluate", EvaluateSchema)):
    register(None, _node, name=f"{_name}_schema")
