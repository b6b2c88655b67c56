"""The common harm taxonomy every source's categories are mapped onto, and the category filter."""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from refusal.data.records import PromptRecord
from refusal.errors import ConfigError

COMMON_CATEGORIES = ("deception", "harassment", "illegal", "cybercrime", "cbrn", "violence", "sexual",
                     "self_harm", "privacy", "unethical", "harmful")
BENIGN = "benign"  # everyday safe prompts with no harm category


def check_taxonomy(taxonomy: Mapping[str, Mapping[str, str | None]]) -> None:
    """Every map target must be a common category, 'benign' or null (null excludes the source category)."""
    valid = [*COMMON_CATEGORIES, BENIGN]
    for source, mapping in taxonomy.items():
        for raw, common in mapping.items():
            if common is not None and common not in valid:
                raise ConfigError(f"data.taxonomy.{source}[{raw!r}]={common!r} is not valid; "
                                  f"choose one of {valid} or null to exclude")


def map_categories(records: Iterable[PromptRecord], taxonomy: Mapping[str, Mapping[str, str | None]]
                   ) -> list[PromptRecord]:
    """Replace each record's source category by its common category via ``taxonomy[record.source]``.

    A source category with no entry that already is a common name (or 'benign') keeps it; one mapped to null
    is dropped; any other -> ConfigError. 'benign' is only valid for safe prompts.
    """
    check_taxonomy(taxonomy)
    out = []
    for r in records:
        mapping = taxonomy.get(r.source, {})
        if r.category in mapping:
            common = mapping[r.category]
        elif r.category in COMMON_CATEGORIES or r.category == BENIGN:
            common = r.category
        else:
            raise ConfigError(
                f"source {r.source!r} category {r.category!r} (prompt {r.id!r}) has no mapping in "
                f"data.taxonomy.{r.source}; known: {sorted(mapping)}; common categories: {list(COMMON_CATEGORIES)}")
        if common is None:
            continue
        if common == BENIGN and r.label != "safe":
            raise ConfigError(f"prompt {r.id!r} is {r.label} but its category maps to {BENIGN!r}, "
                              f"which is only for safe prompts")
        out.append(dataclasses.replace(r, category=common))
    return out


def filter_categories(records: Iterable[PromptRecord], categories) -> list[PromptRecord]:
    """Keep records whose common category is in ``categories`` (null: all); benign prompts are always kept."""
    if categories is None:
        return list(records)
    categories = [categories] if isinstance(categories, str) else list(categories)
    for c in categories:
        if c not in COMMON_CATEGORIES:
            raise ConfigError(f"data.categories entry {c!r} is not valid; choose from {list(COMMON_CATEGORIES)} "
                              f"({BENIGN!r} prompts are always kept)")
    keep = set(categories)
    return [r for r in records if r.category == BENIGN or r.category in keep]
