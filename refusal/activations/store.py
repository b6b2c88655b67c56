"""Sharded activation store: ``shard_XXXXX.safetensors`` files plus a ``manifest.json``.

A shard holds the rows of a contiguous range of prompts (in store order): ``acts.<hook>`` [rows, d] for every
hook, and per row ``prompt_index`` (into the manifest's prompt list), ``position`` (token index in the unpadded
chat-formatted prompt; -1 for a prompt mean) and ``from_end`` (1 = last token; 0 for a prompt mean). Per prompt it
holds ``refusal_score`` and ``n_tokens``. Shards are written to a temp name and renamed, so a shard file that
exists is complete; the manifest says ``complete: true`` only once every shard is there. Several collection tasks
may fill one store (each its own shards); the manifest they write is the one a single process writes.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from refusal.errors import ConfigError
from refusal.utils.io import atomic_path, read_json, write_json

MANIFEST = "manifest.json"
ROW_KEYS = ("prompt_index", "position", "from_end")
PROMPT_KEYS = ("refusal_score", "n_tokens")


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


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
        with safe_open(str(self.shard_path(i)), framework="pt") as f:
            return {k: f.get_tensor(k) for k in (keys or list(f.keys()))}

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
