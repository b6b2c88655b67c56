"""Where a built organism lives: ``<cache_dir>/<key>``, key = hash of the build config, the base weights and the
train (and held-out test) prompts. A build happens in a temp dir that is renamed when complete (its card, written
last, names the key), so a half-written dir is never used."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from refusal.data import build_prompt_set
from refusal.data.records import PromptSet
from refusal.model.loading import LoadedModel, load_model, model_files, resolve_device
from refusal.organism.config import FORMAT_VERSION, NEUTRAL_BUILD_VALUES
from refusal.organism.portable import build_numerics_key
from refusal.organism.planted_config import check_any_organism_cfg, organism_build_config
from refusal.utils.io import read_json, stable_hash

CARD_JSON, CARD_MD = "organism.json", "ORGANISM.md"


def base_identity(base_cfg) -> tuple[str, LoadedModel | None]:
    """(weights hash of the base, the loaded base if it had to be loaded to know it). File-backed bases are hashed
    from their files, without loading the model."""
    files = model_files(base_cfg).weight_files if base_cfg.source in ("hf", "gguf", "gguf_package") else []
    if files:
        # the same formula as LoadedModel.weights_hash for a file-backed model
        return LoadedModel(model=None, tokenizer=None, name=str(base_cfg.name), weight_files=files).weights_hash, None
    base = load_model(base_cfg)
    return base.weights_hash, base


def cache_key(cfg, base_weights_hash: str, train: PromptSet, test: PromptSet) -> tuple[str, dict]:
    """(key, what it hashes): build config, base identity, train prompt ids (and content), held-out test prompts."""
    build = organism_build_config(cfg)
    what = {
        "format_version": FORMAT_VERSION,
        **({"source": "planted"} if cfg.source == "planted" else {}),
        "build": {k: v for k, v in build.items() if NEUTRAL_BUILD_VALUES.get(k, object()) != v},
        "base": {"name": str(cfg.base.name), "weights_hash": base_weights_hash},
        "train_prompt_ids": [r.id for r in train],
        "train_prompts_hash": train.content_hash(),
        "test_prompts_hash": test.content_hash(),
        **build_kernels(cfg),
    }
    return stable_hash(what, length=16), what


def build_kernels(cfg) -> dict:
    """What the key must add about the hardware: for a CPU build, nothing when MKL is pinned to its AVX2 branch (the
    same bits on every Intel CPU with AVX2), else the branch and, where its kernels depend on it, the CPU
    (portable.py ``build_numerics_key``: an AMD build differs from an Intel one); a GPU build's device and GPU model,
    since its kernels round differently from a CPU's and from another GPU model's."""
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        numerics = build_numerics_key()
        return {"built_on": numerics} if numerics else {}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"built_on": {"device": device.type, "name": name}}


def resolve(cfg):
    """(cache key, what it hashes, train split, test split, the base if it had to be loaded to hash it)."""
    check_any_organism_cfg(cfg)
    prompts = build_prompt_set(cfg.data)
    train, test = prompts.filter(split="train"), prompts.filter(split="test")
    base_hash, base = base_identity(cfg.base)
    key, key_parts = cache_key(cfg, base_hash, train, test)
    return key, key_parts, train, test, base


def organism_dir(cfg) -> Path:
    """The cache dir of the organism this ``model`` config describes (it may not be built yet)."""
    return Path(str(cfg.cache_dir)) / resolve(cfg)[0]


def is_complete(directory: Path, key: str) -> bool:
    """A cache dir is used only if its card names this key (the card is written last, inside the temp dir)."""
    card = directory / CARD_JSON
    if not card.is_file():
        return False
    try:
        return read_json(card).get("cache_key") == key
    except (ValueError, OSError):
        return False


def publish(tmp: Path, final: Path, key: str) -> None:
    """Rename the finished temp dir onto ``final``; an incomplete dir already there is moved aside first."""
    if final.exists() and not is_complete(final, key):
        stale = final.with_name(f".stale-{final.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        if not is_complete(final, key):  # another process published first; anything else is an error
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def remove_abandoned_builds(cache_dir: Path, key: str) -> None:
    """Delete temp dirs of earlier builds of ``key`` whose process is gone (killed before it could clean up)."""
    for d in cache_dir.glob(f".{key}.building-*"):
        try:
            pid = int(d.name.split("building-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
