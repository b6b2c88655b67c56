"""The ``logger`` config group (conf/logger/): which Lightning loggers a run writes to, each a ``_target_`` node
that :func:`refusal.logger.loggers.build_loggers` instantiates (a group file sets one of them; the other stays
null)."""
from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from refusal.config import register


@dataclass
class CSVNode:
    _target_: str = MISSING
    save_dir: str = MISSING
    name: str = MISSING
    version: str = MISSING


@dataclass
class WandbNode:
    _target_: str = MISSING
    project: str = MISSING
    entity: Optional[str] = MISSING
    name: Optional[str] = MISSING   # null: <task_name>-<run dir name>
    group: Optional[str] = MISSING  # null: the sweep (multirun dir) or the task name
    tags: List[str] = MISSING
    save_dir: str = MISSING
    mode: str = MISSING
    log_model: bool = MISSING


@dataclass
class LoggerSchema:
    csv: Optional[CSVNode] = None
    wandb: Optional[WandbNode] = None


register("logger", LoggerSchema)
