"""Reading the files sources are made of: CSV/JSONL tables and the data dirs of installed benchmark wheels."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

from refusal.errors import ConfigError


def read_rows(path: str | os.PathLike, columns=()) -> list[dict]:
    """Rows of a .csv or .jsonl file as dicts; ConfigError if the file or a required column is missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    elif suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"{str(path)!r} line {n} is not valid JSON: {e}") from None
        header = sorted({k for r in rows for k in r})
    else:
        raise ConfigError(f"data file {str(path)!r} has suffix {suffix!r}; use one of ['.csv', '.jsonl']")
    for c in columns:
        if c not in header:
            raise ConfigError(f"{str(path)!r} has no column {c!r}; its columns are {header}")
    return rows


def package_dir(package: str, pip_command: str, root: str | os.PathLike | None = None) -> Path:
    """Directory of an installed data wheel, found without importing it, or ``root`` when given."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"{package} root {str(root)!r} is not a directory")
        return root
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; install it with `{pip_command}`")
    return Path(list(spec.submodule_search_locations)[0])
