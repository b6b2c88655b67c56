"""The training checkpoints of a train run: which one a resume starts from, and whether a file is intact.

Lightning writes a checkpoint in place, so a job killed while writing (or a full disk) can leave a truncated
``last.ckpt``. A checkpoint is a zip archive with a CRC per member: it is intact when the archive opens and every
CRC matches. A damaged ``last.ckpt`` is never deleted; the resume starts from the newest intact checkpoint beside it.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import torch

from refusal.errors import ConfigError

log = logging.getLogger(__name__)
LAST = "last.ckpt"


def is_intact(path: Path) -> bool:
    """True when ``path`` is a complete checkpoint archive (opens, and every member's CRC matches)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, EOFError, zipfile.BadZipFile, ValueError):
        return False


def global_step(path: Path) -> int:
    """The training step ``path`` was saved at (tensors are memory-mapped, not read)."""
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False).get("global_step", -1))


def newest_intact(ckpt_dir: Path) -> Path | None:
    """``last.ckpt`` when intact, else the intact checkpoint of ``ckpt_dir`` saved at the latest step; None when
    there is no ``last.ckpt`` or nothing is intact. Says in one log line where training resumes."""
    last = ckpt_dir / LAST
    if not last.exists():
        return None
    if is_intact(last):
        log.info("resuming from %s (step %d)", last, global_step(last))
        return last
    intact = [p for p in sorted(ckpt_dir.glob("*.ckpt")) if p.name != LAST and is_intact(p)]
    best = max(intact, key=global_step, default=None)
    if best is None:
        log.warning("%s is damaged and no other checkpoint in %s is intact: training starts from step 0", last,
                    ckpt_dir)
    else:
        log.warning("%s is damaged: resuming from %s (step %d) instead", last, best, global_step(best))
    return best


def resume_checkpoint(ckpt_path, ckpt_dir: Path) -> str | None:
    """The checkpoint ``ckpt_path`` asks for: None (start fresh), ``last`` (this run's newest intact checkpoint,
    None when there is none) or a .ckpt file, which must exist and be intact."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        found = newest_intact(Path(ckpt_dir))
        return None if found is None else str(found)
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r} does not exist; use null, 'last' or a .ckpt file")
    if not is_intact(path):
        raise ConfigError(f"ckpt_path={ckpt_path!r} is damaged (not a complete checkpoint archive); use null, 'last' "
                          "or an intact .ckpt file")
    return str(path)
