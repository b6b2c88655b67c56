"""Progress bars for the long inner loops (generation, attribution, logits): tqdm on a terminal, nothing where stderr
is not one (logs, tests, SLURM output), because tqdm's ``disable=None`` turns a bar off there."""
from __future__ import annotations

from tqdm.auto import tqdm


def progress(total: int, desc: str, unit: str = "prompt") -> tqdm:
    """A bar over ``total`` items, removed when done; use as a context manager and ``update(n)``."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False, dynamic_ncols=True)
