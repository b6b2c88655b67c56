"""The refusal model organism on the tiny model: data selection, training, the build cache, and (slow) SmolLM2."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from refusal.data import build_prompt_set
from refusal.errors import ConfigError
from refusal.models import organism as org
from refusal.models.loading import load_model

CONF = Path(__file__).resolve().parents[2] / "conf"
CATEGORIES = ("cybercrime", "violence", "illegal")
WORDS = "alpha beta gamma delta river stone cloud paper lamp orbit".split()


def write_prompts(path: Path, n_per_cell: int = 5) -> Path:
    """Short synthetic prompts (the byte tokenizer makes every character a token): toxic and hard per category,
    safe benign; the data config splits them."""
    rows = []
    for label, cats in (("toxic", CATEGORIES), ("hard", CATEGORIES), ("safe", ("benign",))):
        for cat in cats:
            for i in range(n_per_cell):
                rows.append({"id": f"{label}-{cat}-{i}", "prompt": f"{label[0]}{cat[:3]} {WORDS[i % 10]}",
                             "category": cat, "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_cfg(prompts_path: Path) -> dict:
    return {
        "seed": 0,
        "sources": [{"_target_": "refusal.data.sources.table", "path": str(prompts_path), "prompt_column": "prompt",
                     "category_column": "category", "label_column": "label", "id_column": "id",
                     "source_name": "syn"}],
        "taxonomy": {}, "categories": None, "balance": "use_all", "max_per_category": None,
        "split_fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "min_toxic_per_category": 1,
    }


def organism_cfg(tmp_path: Path, **overrides):
    """conf/model/smollm2_organism.yaml with the tiny model as base, synthetic data and a few quick steps."""
    node = OmegaConf.load(CONF / "model" / "smollm2_organism.yaml")
    node.pop("defaults")
    node.base = OmegaConf.load(CONF / "model" / "tiny_llama.yaml")
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        write_prompts(prompts)
    node.data = data_cfg(prompts)
    node.cache_dir = str(tmp_path / "organisms")
    node.refusals = {"shared": ["I'm sorry, no.", "I cannot."], "per_category": ["I can't do {topic}."]}
    node.merge_with({"steps": 4, "batch_size": 4, "lr": 1e-3, "answer_max_new_tokens": 6, "precision": "32-true",
                     "eval": {"max_new_tokens": 4, "batch_size": 16, "n_resamples": 200}})
    node.merge_with(overrides)
    return node


def test_build_then_load(tmp_path, caplog):
    cfg = organism_cfg(tmp_path)
    with caplog.at_level(logging.INFO, logger="refusal.models.organism"):
        loaded = load_model(cfg)
    assert "NOT a production chat model" in caplog.records[0].getMessage()
    assert "organism" in loaded.name and loaded.identity["organism"] is True
    d = Path(loaded.identity["dir"])
    card = json.loads((d / "organism.json").read_text())
    assert card["refused_categories"] == list(CATEGORIES).__class__(sorted(CATEGORIES))
    assert set(card["heldout"]["refusal_rate"]) == {"toxic", "safe", "hard"}
    assert (d / "ORGANISM.md").read_text().startswith("# ")
    # a plain HF dir: transformers alone loads it, chat template included
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert tok.chat_template and model.config.num_hidden_layers == 4
