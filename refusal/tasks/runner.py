"""What every entry point does around its task: one-line errors, W&B closed, the metric returned."""
from __future__ import annotations

import sys
from typing import Callable

from omegaconf import DictConfig

import refusal.schemas  # noqa: F401  (config schemas, before Hydra composes)
from refusal.errors import ConfigError
from refusal.organism import BANNER
from refusal.logger.loggers import finish
from refusal.utils.quiet import silence_known_noise


def announce_model(cfg: DictConfig) -> None:
    """A run on a model organism says so first: its refusals were trained in, it is not a production chat model."""
    model = cfg.get("model")
    if model is not None and model.get("source") in ("organism", "planted"):
        print(f"NOTE: {BANNER % str(model.get('name'))}", flush=True)


def run_task(task: Callable[[DictConfig], float | None], cfg: DictConfig) -> float | None:
    silence_known_noise()
    try:
        announce_model(cfg)
        return task(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        finish()
