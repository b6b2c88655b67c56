"""The project's own prompt set (refusal/data/builtin/*.jsonl): everyday safe requests and seemingly harmful
but safe (hard) requests per common category. Written for this project."""
from __future__ import annotations

from pathlib import Path

from refusal.data.records import PromptRecord
from refusal.data.sources.files import read_rows
from refusal.errors import check_choice

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"
FILES = {"safe": "benign.jsonl", "hard": "hard.jsonl"}


def builtin(labels=("safe", "hard")) -> list[PromptRecord]:
    """Records with id ``builtin:<key>``; ``labels`` picks which files to load (safe, hard)."""
    records = []
    for label in labels:
        check_choice("builtin labels entry", label, FILES)
        for row in read_rows(BUILTIN_DIR / FILES[label], ("key", "prompt", "category", "label")):
            check_choice(f"label of builtin prompt {row['key']!r}", row["label"], (label,))
            records.append(PromptRecord(id=f"builtin:{row['key']}", prompt=row["prompt"],
                                        category=row["category"], label=label, source="builtin"))
    return records
