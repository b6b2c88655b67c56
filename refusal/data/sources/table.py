"""Any CSV or JSONL file of prompts, given a column mapping."""
from __future__ import annotations

from refusal.data.records import PromptRecord
from refusal.data.sources.files import read_rows
from refusal.errors import ConfigError


def table(path, prompt_column, category_column, source_name, label_column=None, label=None,
          id_column=None) -> list[PromptRecord]:
    """Records from ``path`` (.csv / .jsonl). Give exactly one of ``label_column`` (per-row label) or ``label``
    (one label for every row). Ids are ``<source_name>:<id_column value>``, or ``<source_name>:<row>``."""
    if (label_column is None) == (label is None):
        raise ConfigError(f"table source {source_name!r}: give exactly one of label_column or label "
                          f"(got label_column={label_column!r}, label={label!r})")
    if not source_name or ":" in source_name:
        raise ConfigError(f"table source_name={source_name!r} is not valid; use a non-empty name without ':'")
    columns = [c for c in (prompt_column, category_column, label_column, id_column) if c is not None]
    rows = read_rows(path, columns)
    return [
        PromptRecord(
            id=f"{source_name}:{row[id_column] if id_column is not None else i}",
            prompt=str(row[prompt_column]).strip(),
            category=str(row[category_column]).strip(),
            label=str(row[label_column]).strip() if label_column is not None else label,
            source=source_name,
        )
        for i, row in enumerate(rows)
    ]
