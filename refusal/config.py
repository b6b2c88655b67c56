"""Typed config schemas and the few checks a type cannot express.

Each package owns the schema of the config group of its name (``conf/sae/`` <-> ``refusal/sae/config.py``): a
dataclass registered in Hydra's ConfigStore with :func:`register` and listed first in the defaults of every YAML
file of that group, so Hydra itself refuses an unknown key or a value of the wrong type. The YAML files hold the
values (each default in one place: fields are ``MISSING`` in the dataclass); what a type cannot say (ranges,
choices, either-or keys) is checked by the package with the helpers below, which raise :class:`ConfigError` with
a one-line message naming the key, the bad value and what is valid.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from refusal.errors import ConfigError, check_choice

SCHEMA = "schema"  # the name every group's schema is stored under: ``defaults: [schema, _self_]``


def register(group: str | None, node: type, name: str = SCHEMA) -> None:
    """Store ``node`` (a dataclass) as the schema ``<group>/<name>`` in Hydra's ConfigStore (a primary config's
    schema: group None)."""
    ConfigStore.instance().store(group=group, name=name, node=node)


def plain(value: Any) -> Any:
    """A config node as plain Python (interpolations resolved); anything else unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def choice(key: str, value, choices: Iterable):
    """``value`` if it is one of ``choices``, else a ConfigError."""
    check_choice(key, value, choices)
    return value


def integer(key: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int within [lo, hi] (either bound optional); bools are not ints here."""
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (
            hi is not None and value > hi):
        raise ConfigError(f"{key}={value!r} is not valid; use an int{_range(lo, hi)}")
    return value


def number(key: str, value, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
           open_hi: bool = False) -> float:
    """``value`` as a finite float within the bounds (closed unless ``open_lo``/``open_hi``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if open_lo else value >= lo
    if ok and hi is not None:
        ok = value < hi if open_hi else value <= hi
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid; use a number{_range(lo, hi, open_lo, open_hi)}")
    return float(value)


def flag(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not valid; use true or false")
    return value


def _range(lo, hi, open_lo: bool = False, open_hi: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
    if lo is not None:
        return f" {'>' if open_lo else '>='} {lo}"
    if hi is not None:
        return f" {'<' if open_hi else '<='} {hi}"
    return ""
