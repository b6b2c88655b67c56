"""SAELens on-disk format: ``<dir>/cfg.json`` + ``<dir>/sae_weights.safetensors``.

Saving folds ``input_scale`` into the weights (the saved SAE takes raw activations) and writes the directory
atomically: it is built under a temporary name next to the target and renamed into place, so a directory at
the target path is always complete. Loading accepts directories written by other tools too (SAELens >= 6 with
a nested ``metadata`` block, older flat configs, TopK stored as "standard" + activation_fn "topk", Gemma Scope
style ``jumprelu`` with a ``threshold`` or ``log_threshold`` tensor).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from refusal.errors import ConfigError
from refusal.sae.model import SparseAutoencoder
from refusal.utils.io import write_json

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
_TO_SAELENS = {"topk": "topk", "relu_l1": "standard", "jumprelu": "jumprelu"}
_FROM_SAELENS = {"topk": "topk", "standard": "relu_l1", "jumprelu": "jumprelu"}
# the SAELens config layout written (nested ``metadata``): without a version there SAELens >= 6 reads the file as a
# pre-6.0 one and drops the metadata block (hook_name, model_name, ...)
SAELENS_FORMAT_VERSION = "6.0.0"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def hook_layer(hook_name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(m.group(1)) if m else None


def save_saelens(sae: SparseAutoencoder, path: str | os.PathLike, hook_name: str, model_name: str,
                 metadata: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` (folded to raw units) as a SAELens directory at ``path``; returns the path."""
    path = Path(path)
    out = sae.folded()
    cfg: dict[str, Any] = {
        "architecture": _TO_SAELENS[out.architecture],
        "d_in": out.d_in,
        "d_sae": out.d_sae,
        "dtype": str(out.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": out.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {**(metadata or {}), "model_name": model_name, "hook_name": hook_name,
                     "hook_layer": hook_layer(hook_name), "trained_architecture": sae.architecture,
                     "sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None},
    }
    if out.architecture == "topk":
        cfg["k"] = out.k
    tensors = {name: getattr(out, name).detach().cpu().contiguous() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if out.threshold is not None:
        tensors["threshold"] = out.threshold.detach().cpu().contiguous()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / CFG_FILE, cfg)
        if path.exists():  # swap: the old complete dir moves aside, the new complete dir moves in
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "dir")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_saelens(path: str | os.PathLike, d_in: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load a SAELens directory -> (SparseAutoencoder in eval mode, cfg dict with ``hook_name`` and
    ``model_name`` filled in at top level from wherever the file keeps them). ``d_in``: the width of the
    activations it will read; a mismatch is a ConfigError. ``dtype``: default the one in cfg.json."""
    path = Path(path)
    if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise ConfigError(f"SAE dir {path} must contain {CFG_FILE} and {WEIGHTS_FILE}")
    cfg = json.loads((path / CFG_FILE).read_text())
    meta = cfg.get("metadata") or {}
    for key in ("hook_name", "model_name", "hook_layer"):
        cfg.setdefault(key, meta.get(key))
    if d_in is not None and cfg.get("d_in") != d_in:
        raise ConfigError(f"SAE at {path} has d_in={cfg.get('d_in')} but the activations have width {d_in}")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise ConfigError(f"SAE at {path} has normalize_activations={norm!r}; only 'none' is supported "
                          "(fold the normalisation into the weights first)")

    arch_name = cfg.get("architecture", "standard")
    act_fn = cfg.get("activation_fn") or cfg.get("activation_fn_str")
    k = cfg.get("k")
    if arch_name == "standard" and act_fn == "topk":  # older SAELens TopK
        arch_name, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    elif arch_name == "standard" and act_fn not in (None, "relu"):
        raise ConfigError(f"SAE at {path} has activation_fn={act_fn!r}; supported: relu, topk")
    if arch_name not in _FROM_SAELENS:
        raise ConfigError(f"SAE at {path} has architecture={arch_name!r}; supported: {sorted(_FROM_SAELENS)}")
    arch = _FROM_SAELENS[arch_name]

    tensors = load_file(str(path / WEIGHTS_FILE))
    if arch == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    wanted = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if arch == "jumprelu" else set())
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.all(scaling == 1):
        raise ConfigError(f"SAE at {path} has a non-unit scaling_factor tensor, which is not supported")
    if set(tensors) != wanted:
        raise ConfigError(f"SAE at {path} has tensors {sorted(tensors)}; expected {sorted(wanted)}")

    d_in_cfg, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    shapes = {"W_enc": (d_in_cfg, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in_cfg), "b_dec": (d_in_cfg,),
              "threshold": (d_sae,)}
    for name, t in tensors.items():
        if tuple(t.shape) != shapes[name]:
            raise ConfigError(f"SAE at {path}: {name} has shape {tuple(t.shape)}, cfg.json implies {shapes[name]}")
    if dtype is None:
        dtype = _DTYPES.get(str(cfg.get("dtype", "float32")).removeprefix("torch."), tensors["W_enc"].dtype)
    sae = SparseAutoencoder(d_in_cfg, d_sae, arch, k=k, apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
                            dtype=dtype)
    with torch.no_grad():
        for name, t in tensors.items():
            getattr(sae, name).copy_(t)
    return sae.to(device).eval(), cfg
