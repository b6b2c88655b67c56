"""What every run record shares: the run dir, and its files named relative to it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """A run dir; each subclass names its files with :func:`entry`."""
    dir: Path

    def __post_init__(self):
        object.__setattr__(self, "dir", Path(self.dir))


def entry(*parts: str) -> property:
    """The path ``<run dir>/<parts...>`` as a read-only attribute."""
    return property(lambda self: self.dir.joinpath(*parts))
