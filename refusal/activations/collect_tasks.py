"""One collection split over N tasks (a SLURM array, torchrun processes, or runs started by hand).

Task ``i`` of ``N`` collects the contiguous shard range ``[i*S//N, (i+1)*S//N)`` of the store's ``S`` shards into
the shared store dir. Shards are written atomically and the store is marked complete by whichever task finds every
shard present after writing its own (the last to finish), so the result is the store one process would write.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from refusal.errors import ConfigError

ENV = "env"


@dataclass(frozen=True)
class CollectTask:
    index: int = 0
    count: int = 1

    def __post_init__(self):
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"activations.collect_tasks={self.count!r} is not valid; give an int >= 1 or {ENV!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise ConfigError(f"activations.collect_task_index={self.index!r} is not valid; give an int in "
                              f"[0, {self.count - 1}] (collect_tasks={self.count})")

    def shard_range(self, n_shards: int) -> range:
        return range(self.index * n_shards // self.count, (self.index + 1) * n_shards // self.count)

    @classmethod
    def from_config(cls, tasks, index, environ: Mapping[str, str] | None = None) -> "CollectTask":
        """``tasks``: an int, or ``"env"`` to read this task's place from the environment (``index`` ignored)."""
        if tasks == ENV:
            return cls.from_env(os.environ if environ is None else environ)
        return cls(index=index, count=tasks)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "CollectTask":
        """SLURM array (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``, ids
        consecutive) or torchrun (``RANK`` of ``WORLD_SIZE``)."""
        if "SLURM_ARRAY_TASK_ID" in environ:
            names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
            task_id, first, count = (_env_int(environ, n) for n in names)
            step = _env_int(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
            if step != 1 or task_id - first >= count:
                raise ConfigError(f"SLURM array task ids must be consecutive for activations.collect_tasks={ENV!r} "
                                  f"(got id {task_id}, min {first}, count {count}, step {step}); use --array=0-<N-1>")
            return cls(index=task_id - first, count=count)
        if "RANK" in environ and "WORLD_SIZE" in environ:
            return cls(index=_env_int(environ, "RANK"), count=_env_int(environ, "WORLD_SIZE"))
        raise ConfigError(f"activations.collect_tasks={ENV!r} needs SLURM_ARRAY_TASK_ID (a SLURM array job) or "
                          "RANK and WORLD_SIZE (torchrun); none is set")


def _env_int(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"environment variable {name}={value!r} is not an int") from None
