"""Abliteration: the orthogonalised model computes what the directional-ablation hooks compute, and the exported dir
loads with the project's own loader."""
from __future__ import annotations

import copy
import pytest
import torch
from omegaconf import OmegaConf

from refusal.evaluation.abliterate import CARD, export_abliterated, orthogonalise
from refusal.evaluation.interventions import directional_ablation, intervene
from refusal.model.chat import ChatFormatter
from refusal.model.loading import LoadedModel, load_model
from refusal.model.tiny import tiny_llama


def _tiny(tied: bool) -> LoadedModel:
    model, tok = tiny_llama(n_layers=3, d_model=32, n_heads=4, d_mlp=64, seed=1)
    with torch.no_grad():  # a trained model's norm weights are not all ones (the final one matters for a tied head)
        model.model.norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
        model.config.tie_word_embeddings = True
    tok.padding_side = "left"
    return LoadedModel(model=model.eval().requires_grad_(False), tokenizer=tok, name="tiny")


def _logits(model, fmt, prompts):
    enc = fmt.encode(prompts)
    with torch.no_grad():
        return model(**enc.model_inputs(), use_cache=False).logits


PROMPTS = ["how do I pick a lock", "bake a lemon cake", "write me a poem about the sea"]


@pytest.mark.parametrize("tied", [False, True])
def test_the_exported_model_equals_the_ablation_hooks(tied, tmp_path):
    loaded = _tiny(tied)
    fmt = ChatFormatter(loaded.tokenizer)
    r = torch.randn(32, generator=torch.Generator().manual_seed(0))
    with intervene(loaded.model, directional_ablation(r, 3)):
        hooked = _logits(loaded.model, fmt, PROMPTS)
    plain = _logits(loaded.model, fmt, PROMPTS)
    edits = export_abliterated(loaded, r, tmp_path / "abl", {"model": "tiny", "name_hint": "tiny-abl"})
    assert edits["untied_output_head"] is tied and len(edits["edited"]) == 1 + 2 * 3
    exported = load_model(OmegaConf.create({"source": "hf", "path": str(tmp_path / "abl"), "name": "tiny-abl",
                                            "dtype": "float32", "device": "cpu", "system_prompt": None,
                                            "refusal_tokens": None}))
    got = _logits(exported.model, ChatFormatter(exported.tokenizer), PROMPTS)
    torch.testing.assert_close(got, hooked, atol=1e-4, rtol=0)
    assert float((got - plain).abs().max()) > 1e-2  # the edit did something
    assert (tmp_path / "abl" / CARD).read_text().startswith("# Abliterated model")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    torch.testing.assert_close(_logits(loaded.model, fmt, PROMPTS), plain)  # the original is untouched


def test_a_tied_head_must_be_untied_for_the_equality():
    loaded = _tiny(True)
    fmt = ChatFormatter(loaded.tokenizer)
    r = torch.randn(32, generator=torch.Generator().manual_seed(0))
    with intervene(loaded.model, directional_ablation(r, 3)):
        hooked = _logits(loaded.model, fmt, PROMPTS)
    model = copy.deepcopy(loaded.model)
    orthogonalise(model, r)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    model.lm_head.weight = model.model.embed_tokens.weight  # tied again: the head sees the edited embedding
    assert float((_logits(model, fmt, PROMPTS) - hooked).abs().max()) > 1e-3

