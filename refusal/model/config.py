"""Schemas of the ``model`` group, one per source (their keys differ): conf/model/hf.yaml (``hf``), gguf.yaml
(``gguf``), smollm2_135m.yaml (``gguf_package``), tiny_llama.yaml (``tiny``). The organism's schema is
refusal/organism/config.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from refusal.config import register


@dataclass
class LanguageModel:
    """Keys every language-model source has."""

    name: str = MISSING
    source: str = MISSING  # hf | gguf | gguf_package | tiny
    dtype: str = MISSING  # float32 | float16 | bfloat16
    device: str = MISSING  # cpu | cuda | auto
    system_prompt: Optional[str] = MISSING  # null: the chat template's own default
    refusal_tokens: Optional[list[Any]] = MISSING  # null: first tokens of typical refusal openings


@dataclass
class HFModel(LanguageModel):
    path: str = MISSING  # a local dir or a name in the local HF cache


@dataclass
class GGUFModel(LanguageModel):
    path: str = MISSING  # a .gguf file or a dir holding one
    gguf_file: Optional[str] = MISSING  # null: the only .gguf file in the dir


@dataclass
class GGUFPackageModel(GGUFModel):
    pip_name: str = MISSING  # what to pip-install when the package is missing


@dataclass
class TinyShape:
    n_layers: int = MISSING
    d_model: int = MISSING
    n_heads: int = MISSING
    d_mlp: int = MISSING


@dataclass
class TinyModel(LanguageModel):
    tiny: TinyShape = MISSING
    seed: int = MISSING


for _source, _schema in (("hf", HFModel), ("gguf", GGUFModel), ("gguf_package", GGUFPackageModel),
                         ("tiny", TinyModel)):
    register("model", _schema, name=f"schema_{_source}")
