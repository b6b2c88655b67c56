"""PromptRecord (one prompt with its category, label and split) and PromptSet (an ordered, id-unique collection)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from refusal.errors import ConfigError, check_choice
from refusal.utils.io import atomic_path, stable_hash

LABELS = ("toxic", "safe", "hard")
SPLITS = ("train", "val", "test")
UNASSIGNED = ""  # split of a record a source returned, before build_prompt_set assigns one


def normalize_prompt(text: str) -> str:
    """Whitespace- and case-insensitive form of a prompt, used to find duplicates."""
    return " ".join(text.split()).casefold()


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    category: str
    label: str
    source: str
    split: str = UNASSIGNED

    def __post_init__(self):
        if not self.id:
            raise ConfigError(f"prompt record id is empty (prompt {self.prompt[:60]!r})")
        if not self.prompt.strip():
            raise ConfigError(f"prompt record {self.id!r} has an empty prompt")
        if not self.category:
            raise ConfigError(f"prompt record {self.id!r} has an empty category")
        check_choice(f"label of prompt record {self.id!r}", self.label, LABELS)
        check_choice(f"split of prompt record {self.id!r}", self.split, (*SPLITS, UNASSIGNED))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_set(name: str, value, choices=None) -> set | None:
    if value is None:
        return None
    values = {value} if isinstance(value, str) else set(value)
    if choices is not None:
        for v in values:
            check_choice(name, v, choices)
    return values


class PromptSet:
    """Ordered records with unique ids. ``records`` is a tuple; filtering returns a new PromptSet."""

    def __init__(self, records: Iterable[PromptRecord]):
        self._records = tuple(records)
        seen: set[str] = set()
        for r in self._records:
            if r.id in seen:
                raise ConfigError(f"duplicate prompt id {r.id!r}; every prompt id must be unique")
            seen.add(r.id)

    @property
    def records(self) -> tuple[PromptRecord, ...]:
        return self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self._records)

    def __getitem__(self, i: int) -> PromptRecord:
        return self._records[i]

    def __eq__(self, other) -> bool:
        return isinstance(other, PromptSet) and self._records == other._records

    def __repr__(self) -> str:
        return f"PromptSet({len(self)} records, hash={self.content_hash()})"

    def filter(self, split=None, label=None, category=None) -> "PromptSet":
        """Keep records matching every given field; each may be one value or a collection of values."""
        splits = _as_set("split", split, SPLITS)
        labels = _as_set("label", label, LABELS)
        categories = _as_set("category", category)
        return PromptSet(
            r for r in self._records
            if (splits is None or r.split in splits)
            and (labels is None or r.label in labels)
            and (categories is None or r.category in categories)
        )

    def categories(self, label=None) -> list[str]:
        """Sorted distinct categories, optionally only of records with the given label(s)."""
        return sorted({r.category for r in self.filter(label=label)})

    def content_hash(self) -> str:
        return stable_hash([r.to_dict() for r in self._records], length=16)

    def to_jsonl(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for r in self._records:
                    f.write(json.dumps(r.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> "PromptSet":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"prompt set file {str(path)!r} does not exist")
        records = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(PromptRecord(**json.loads(line)))
                except (json.JSONDecodeError, TypeError) as e:
                    raise ConfigError(f"{str(path)!r} line {n} is not a prompt record: {e}") from None
        return cls(records)
