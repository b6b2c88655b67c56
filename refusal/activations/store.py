"""Sharded activation store: ``shard_XXXXX.safetensors`` files plus a ``manifest.json``.

A shard holds the rows of a contiguous range of prompts (in store order): ``acts.<hook>`` [rows, d] for every
hook, and per row ``prompt_index`` (into the manifest's prompt list), ``position`` (token index in the unpadded
chat-formatted prompt; -1 for a prompt mean) and ``from_end`` (1 = last token; 0 for a prompt mean). Per prompt it
holds ``refusal_score`` and ``n_tokens``. Shards are written to a temp name and renamed, so a shard file that
exists was complete when written; the manifest says ``complete: true`` only once every shard is there. Several
collection tasks may fill one store (each its own shards); the manifest they write is the one a single process writes.

Each shard's size and sha256 (its *record*) go into a ``shard_XXXXX.safetensors.json`` beside it before the shard
is renamed into place, and into the shard's manifest entry (``bytes``, ``sha256``) when the store is complete (the
side files are then removed). :func:`shard_damage` checks a shard against its record: the size and the safetensors
header always, the hash on request. Stores written without records are checked by their headers alone.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import json

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from refusal.errors import ConfigError
from refusal.utils.io import atomic_path, file_hash, read_json, write_json

MANIFEST = "manifest.json"
ROW_KEYS = ("prompt_index", "position", "from_end")
PROMPT_KEYS = ("refusal_score", "n_tokens")


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def record_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".json")


def file_record(path: Path) -> dict:
    """The size and sha256 of a file, as kept for every shard."""
    return {"bytes": path.stat().st_size, "sha256": file_hash(path, length=64)}


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Write a shard atomically, its record first (so a shard that exists has one); return the record."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        record = file_record(tmp)
        write_json(record_path(path), record)
    return record


def known_record(shard: Path, entry: dict) -> dict | None:
    """The record a shard was written with: its side file while collecting, else its manifest ``entry``'s."""
    side = record_path(shard)
    if side.is_file():
        return read_json(side)
    return {"bytes": entry["bytes"], "sha256": entry["sha256"]} if "sha256" in entry else None


def shard_damage(shard: Path, record: dict | None, full: bool = False) -> str | None:
    """Why ``shard`` is not the file its ``record`` describes (None when it is): missing, a different size, a
    header that does not match the file, or (``full``) a different sha256."""
    if not shard.is_file():
        return "missing"
    size = shard.stat().st_size
    if record is not None and size != record["bytes"]:
        return f"{size} bytes, the manifest says {record['bytes']}"
    problem = _header_damage(shard, size)
    if problem is None and full and record is not None and file_hash(shard, length=64) != record["sha256"]:
        problem = "its sha256 differs from the manifest's"
    return problem


def _header_damage(shard: Path, size: int) -> str | None:
    """Whether the safetensors header is readable and its tensors end where the file ends."""
    with open(shard, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else size
        if n > size - 8:
            return f"{size} bytes, its header is cut off"
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is unreadable"
    if 8 + n + end != size:
        return f"{size} bytes, its header needs {8 + n + end}"
    return None


def damaged_shards(store_dir: Path, manifest: dict, full: bool = False, shards=None) -> dict[int, str]:
    """``{shard index: what is wrong}`` over ``shards`` (default all) of a store."""
    entries = manifest["shards"]
    found = {}
    for i in range(len(entries)) if shards is None else shards:
        path = store_dir / entries[i]["file"]
        problem = shard_damage(path, known_record(path, entries[i]), full)
        if problem is not None:
            found[i] = problem
    return found


def damage_error(store_dir: Path, manifest: dict, damaged: dict[int, str]) -> ConfigError:
    i, problem = next(iter(damaged.items()))
    more = f" (and {len(damaged) - 1} more shards)" if len(damaged) > 1 else ""
    return ConfigError(f"activation store {store_dir}: {manifest['shards'][i]['file']} is damaged ({problem}){more}; "
                       "rerun the collection with the same config (train.py or python -m refusal.collect) "
                       "to collect it again")


def check_fingerprint(store_dir: Path, fingerprint: dict[str, Any]) -> dict | None:
    """Return the existing manifest if its fingerprint equals ``fingerprint``; raise ConfigError on a mismatch."""
    path = store_dir / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    old = manifest.get("fingerprint", {})
    if old != fingerprint:
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        raise ConfigError(
            f"activation store {store_dir} was built with different settings ({', '.join(diff)}); "
            "point activations.dir elsewhere or delete it"
        )
    return manifest


class ActivationStore:
    """Read side of a complete store. Nothing is loaded until asked for."""

    def __init__(self, store_dir: str | Path):
        self.dir = Path(store_dir)
        path = self.dir / MANIFEST
        if not path.exists():
            raise ConfigError(f"no activation store at {self.dir} (missing {MANIFEST})")
        self.manifest = read_json(path)
        if not self.manifest.get("complete"):
            shards = self.manifest.get("shards", [])
            present = sum((self.dir / sh["file"]).exists() for sh in shards)
            raise ConfigError(f"activation store {self.dir} is incomplete ({present} of {len(shards)} shards); "
                              "rerun collection (or the missing collect tasks) to resume it")
        damaged = damaged_shards(self.dir, self.manifest)
        if damaged:
            raise damage_error(self.dir, self.manifest, damaged)

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_model_by_hook"][self.hooks[0]])

    def width(self, hook: str) -> int:
        return int(self.manifest["d_model_by_hook"][hook])

    @property
    def prompts(self) -> list[dict]:
        return self.manifest["prompts"]

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def shard_path(self, i: int) -> Path:
        return self.dir / self.manifest["shards"][i]["file"]

    def load_shard(self, i: int, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
        try:
            with safe_open(str(self.shard_path(i)), framework="pt") as f:
                return {k: f.get_tensor(k) for k in (keys or list(f.keys()))}
        except (SafetensorError, OSError) as e:
            damaged = damaged_shards(self.dir, self.manifest, full=True, shards=[i])
            if damaged:
                raise damage_error(self.dir, self.manifest, damaged) from e
            raise

    def load_rows_meta(self, i: int) -> dict[str, torch.Tensor]:
        return self.load_shard(i, list(ROW_KEYS))

    @cached_property
    def per_prompt(self) -> dict[str, torch.Tensor]:
        """Refusal score and token count of every prompt, in store order."""
        parts = [self.load_shard(i, list(PROMPT_KEYS)) for i in range(self.n_shards)]
        return {k: torch.cat([p[k] for p in parts]) for k in PROMPT_KEYS}

    def load_hook(self, hook: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All rows of one hook with their row metadata (loads the whole hook: for small stores and tests)."""
        parts = [self.load_shard(i, [f"acts.{hook}", *ROW_KEYS]) for i in range(self.n_shards)]
        acts = torch.cat([p[f"acts.{hook}"] for p in parts])
        return acts, {k: torch.cat([p[k] for p in parts]) for k in ROW_KEYS}


def write_manifest(store_dir: Path, manifest: dict) -> None:
    write_json(store_dir / MANIFEST, manifest)
