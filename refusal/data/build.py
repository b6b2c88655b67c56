"""build_prompt_set: sources -> de-duplicate -> common taxonomy -> category filter -> balance/cap -> split."""
from __future__ import annotations

from typing import Iterable

import hydra.utils
from hydra.errors import InstantiationException

from refusal.config import integer, plain
from refusal.data.config import DATA_KEYS
from refusal.data.records import LABELS, SPLITS, PromptRecord, PromptSet, normalize_prompt
from refusal.data.split import assign_splits, check_splits, select
from refusal.data.taxonomy import filter_categories, map_categories
from refusal.errors import ConfigError

def check_data_cfg(data_cfg) -> None:
    """The keys of :class:`DataSchema`, for a recipe given as a plain mapping (Hydra checks a composed one)."""
    keys = list(data_cfg.keys())
    for k in keys:
        if k not in DATA_KEYS:
            raise ConfigError(f"data.{k} is not a known key; known keys are {list(DATA_KEYS)}")
    for k in DATA_KEYS:
        if k not in keys:
            raise ConfigError(f"data.{k} is missing; the data config needs {list(DATA_KEYS)}")
    integer("data.seed", data_cfg["seed"])


def load_sources(sources) -> list[PromptRecord]:
    """Instantiate every ``data.sources`` node; each must return a list of PromptRecord with unique ids."""
    if not sources:
        raise ConfigError("data.sources is empty; list at least one source node with a _target_")
    records: list[PromptRecord] = []
    owner: dict[str, int] = {}
    for i, node in enumerate(sources):
        target = node.get("_target_") if hasattr(node, "get") else None
        if not target:
            raise ConfigError(f"data.sources[{i}] has no _target_ (e.g. refusal.data.sources.builtin)")
        try:
            out = hydra.utils.instantiate(node, _convert_="all")
        except InstantiationException as e:
            cause = e.__cause__
            if isinstance(cause, ConfigError):
                raise cause from None
            detail = " ".join(str(cause or e).split())
            raise ConfigError(f"data.sources[{i}] ({target}) failed: {detail}") from None
        if not isinstance(out, list) or not all(isinstance(r, PromptRecord) for r in out):
            raise ConfigError(f"data.sources[{i}] ({target}) returned {type(out).__name__}; expected a list of "
                              f"PromptRecord")
        for r in out:
            if r.id in owner:
                raise ConfigError(f"prompt id {r.id!r} comes from data.sources[{owner[r.id]}] and "
                                  f"data.sources[{i}]; ids must be unique (give table sources distinct source_name)")
            owner[r.id] = i
        records.extend(out)
    return records


def drop_duplicate_prompts(records: Iterable[PromptRecord]) -> list[PromptRecord]:
    """Keep one record per prompt text (whitespace- and case-insensitive): the one with the smallest id.
    The same text with two different labels is a ConfigError."""
    best: dict[str, PromptRecord] = {}
    for r in records:
        key = normalize_prompt(r.prompt)
        other = best.get(key)
        if other is not None and other.label != r.label:
            raise ConfigError(f"prompts {other.id!r} ({other.label}) and {r.id!r} ({r.label}) have the same text "
                              f"but different labels")
        if other is None or r.id < other.id:
            best[key] = r
    return list(best.values())


def build_prompt_set(data_cfg) -> PromptSet:
    """The prompt set the ``data`` config describes: records with common categories and assigned splits, ordered
    by split, label, category, id. Same config and seed -> same set, whatever order the sources list rows in."""
    check_data_cfg(data_cfg)
    seed = data_cfg["seed"]
    records = load_sources(data_cfg["sources"])
    records = drop_duplicate_prompts(records)
    records = map_categories(records, plain(data_cfg["taxonomy"]) or {})
    records = filter_categories(records, plain(data_cfg["categories"]))
    records = select(records, data_cfg["balance"], plain(data_cfg["max_per_category"]), seed)
    records = assign_splits(records, plain(data_cfg["split_fractions"]), seed)
    check_splits(records)
    order = lambda r: (SPLITS.index(r.split), LABELS.index(r.label), r.category, r.id)  # noqa: E731
    return PromptSet(sorted(records, key=order))
