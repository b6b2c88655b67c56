"""The config a run saved (``.hydra/config.yaml``) and the keys a later run adopts from it."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from refusal.errors import ConfigError

log = logging.getLogger(__name__)
SAVED_CONFIG = Path(".hydra") / "config.yaml"
ADOPTED_KEYS = ("data", "model")


def saved_config(run_dir) -> DictConfig | None:
    """The config ``run_dir``'s run was composed with, or None when it saved none (or no dir is given)."""
    path = Path(run_dir) / SAVED_CONFIG if run_dir else None
    return OmegaConf.load(path) if path is not None and path.is_file() else None


def saved_value(run_dir, key: str, default=None):
    """``key`` (a dotted path) of ``run_dir``'s saved config, ``default`` when absent."""
    saved = saved_config(run_dir)
    return default if saved is None else OmegaConf.select(saved, key, default=default)


def adopt_run_config(cfg: DictConfig, *run_dirs) -> None:
    """Fill ``data`` and ``model`` when unset from the first of ``run_dirs`` whose saved config has them
    (interpolations resolved there, so an organism's ``${data}`` is that run's prompts). With no run to take the
    model from, it must be given."""
    for key in ADOPTED_KEYS:
        if cfg.get(key) is not None:
            continue
        for run_dir in run_dirs:
            saved = saved_config(run_dir)
            if saved is None or saved.get(key) is None:
                continue
            try:
                value = OmegaConf.create(OmegaConf.to_container(saved[key], resolve=True))
            except Exception:  # e.g. ${hydra:...} paths, unresolvable outside that run: keep them as written
                value = saved[key]
            with open_dict(cfg):
                cfg[key] = value
            log.info("%s config taken from the run %s", key, run_dir)
            break
    if cfg.get("model") is None:
        raise ConfigError("model is not set and no train_dir/discover_dir run records one; pass model=<name> "
                          "(e.g. smollm2_organism, smollm2_135m, hf, tiny_llama)")
