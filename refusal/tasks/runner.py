"""What every entry point does around its task: one-line errors, W&B closed, the metric returned."""
from __future__ import annotations

import sys
from typing import Callable

from omegaconf import DictConfig

from refusal.errors import ConfigError
from refusal.tracking.loggers import finish


def run_task(task: Callable[[DictConfig], float | None], cfg: DictConfig) -> float | None:
    try:
        return task(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        finish()
