"""OR-Bench from a local directory the user downloaded (80k safe, hard-1k hard, toxic)."""
from __future__ import annotations

import random
from pathlib import Path

from refusal.data.records import LABELS, PromptRecord, normalize_prompt
from refusal.data.sources.files import read_rows
from refusal.errors import ConfigError, check_choice
from refusal.utils.io import stable_hash

DEFAULT_FILES = {"safe": "or-bench-80k.csv", "hard": "or-bench-hard-1k.csv", "toxic": "or-bench-toxic.csv"}
# A prompt found in several files keeps the first label in this order (hard-1k prompts also occur in 80k).
LABEL_PRIORITY = ("hard", "toxic", "safe")


def orbench(root, files=None, max_safe=None, seed=0) -> list[PromptRecord]:
    """Records with id ``orbench:<file stem>:<row>``, category = OR-Bench category.

    ``files`` maps label -> file name inside ``root`` (default: all three OR-Bench files); a prompt that occurs
    in several files or rows is kept once (hard before toxic before safe, then the first row). ``max_safe``
    keeps a seeded random subset of that many safe prompts (null: all).
    """
    root = Path(root)
    files = dict(DEFAULT_FILES if files is None else files)
    for label in files:
        check_choice("orbench files key", label, LABELS)
    expected = sorted(files.values())
    if not root.is_dir():
        raise ConfigError(f"OR-Bench directory {str(root)!r} does not exist; it must hold {expected}")
    for name in files.values():
        if not (root / name).is_file():
            raise ConfigError(f"OR-Bench file {str(root / name)!r} is missing; {str(root)!r} must hold {expected}")
    if max_safe is not None and (isinstance(max_safe, bool) or not isinstance(max_safe, int) or max_safe < 1):
        raise ConfigError(f"orbench max_safe={max_safe!r} is not valid; use a positive int or null")

    seen: set[str] = set()
    by_label: dict[str, list[PromptRecord]] = {}
    for label in (lb for lb in LABEL_PRIORITY if lb in files):
        name = files[label]
        stem = Path(name).stem
        kept = by_label.setdefault(label, [])
        for i, row in enumerate(read_rows(root / name, ("prompt", "category"))):
            key = normalize_prompt(row["prompt"])
            if not key or key in seen:
                continue
            seen.add(key)
            kept.append(PromptRecord(id=f"orbench:{stem}:{i}", prompt=row["prompt"].strip(),
                                     category=row["category"].strip(), label=label, source="orbench"))
    safe = by_label.get("safe", [])
    if max_safe is not None and len(safe) > max_safe:
        rng = random.Random(stable_hash(["orbench-max-safe", seed]))
        keep = set(rng.sample(range(len(safe)), max_safe))
        by_label["safe"] = [r for i, r in enumerate(safe) if i in keep]
    return [r for label in LABEL_PRIORITY for r in by_label.get(label, [])]
