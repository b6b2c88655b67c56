"""Wired organisms: tiny Llama models whose refusal mechanism is set by hand, so the verdict they should get is known
by construction (tests/verdict/test_wired_end_to_end.py and ``python bench/verdict.py`` run the pipeline on them).

The residual stream's first dimensions are reserved; the random model neither reads nor writes them:
- one *recognition* dimension per category: the category's marker character embeds along it; layer 0's head 0
  attends uniformly to every earlier token and copies it, so at the last prompt token it holds the share of marker
  tokens;
- one *refusal* dimension per writer: at layer 1, one MLP unit per writer reads its categories' recognition
  dimensions (zero without a marker, so exactly nothing on prompts without one) and writes its refusal dimension;
  the unembedding reads every refusal dimension into the refusal tokens' logits.
Designs: ``monolithic`` has one writer for every category (one shared mechanism); ``modular`` one writer per
category (separate mechanisms); ``gated`` one writer for every category but the last, which is not refused.
Removing a writer's dimension from the residual removes exactly the refusal of its categories; nothing else reads
it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from refusal.behavior.score import resolve_refusal_tokens
from refusal.data import PromptRecord, PromptSet, analyze_splits
from refusal.errors import ConfigError
from refusal.model.tiny import tiny_llama
from refusal.runs import TrainRun
from refusal.sae.io import save_saelens
from refusal.sae.model import SparseAutoencoder

DESIGNS = ("monolithic", "modular", "gated")
WORDS = "alpha beta gamma delta river stone cloud paper lamp orbit north south".split()
MARKERS = {"cybercrime": "#", "illegal": "%", "violence": "&"}  # a marker character per category (common names)
WRITER_LAYER = 1  # the layer whose MLP writes refusal


def writers(design: str, n_categories: int) -> list[list[int]]:
    """For each writer, the categories (indices) it refuses."""
    if design == "monolithic":
        return [list(range(n_categories))]
    if design == "modular":
        return [[c] for c in range(n_categories)]
    if design == "gated":  # one shared writer for every category but the last, which is answered
        return [list(range(n_categories - 1))]
    raise ConfigError(f"wired design {design!r} is not one of {list(DESIGNS)}")


@torch.no_grad()
def wired_llama(design: str, markers: list[str], *, embed: float = 1.0, copy_gain: float = 0.05,
                unit_gain: float = 3.0, write: float = 0.02, readout: float = 2.0, seed: int = 0):
    """(model, tokenizer, reserved dims {"recognition": [...], "refusal": [...]}) for ``markers`` (one single
    ASCII character per category, in category order)."""
    model, tok = tiny_llama(n_layers=4, d_model=64, n_heads=4, d_mlp=128, seed=seed)
    groups = writers(design, len(markers))
    rec = list(range(len(markers)))
    ref = list(range(len(markers), len(markers) + len(groups)))
    reserved = rec + ref
    m = model.model
    hd = m.config.hidden_size // m.config.num_attention_heads
    for layer in m.layers:  # the random model neither reads nor writes the reserved dimensions
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj,
                    layer.mlp.up_proj):
            lin.weight[:, reserved] = 0
        layer.self_attn.o_proj.weight[reserved, :] = 0
        layer.mlp.down_proj.weight[reserved, :] = 0
    m.embed_tokens.weight[:, reserved] = 0
    for c, ch in enumerate(markers):
        (tid,) = tok.encode(ch, add_special_tokens=False)
        m.embed_tokens.weight[tid, rec[c]] = embed
    attn = m.layers[0].self_attn  # head 0: uniform attention, copies the recognition dimensions
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
        lin.weight[:hd] = 0
    attn.o_proj.weight[:, :hd] = 0
    for c, dim in enumerate(rec):
        attn.v_proj.weight[c, dim] = 1.0
        attn.o_proj.weight[dim, c] = copy_gain
    mlp = m.layers[WRITER_LAYER].mlp  # one unit per writer: silu(a·r)·(a·r) along its refusal dim, r = recognition
    for w, cats in enumerate(groups):
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight[w] = 0
            lin.weight[w, [rec[c] for c in cats]] = unit_gain
        mlp.down_proj.weight[:, w] = 0
        mlp.down_proj.weight[ref[w], w] = write
    head = model.lm_head.weight
    head[:, reserved] = 0
    for tid in resolve_refusal_tokens(tok):
        head[tid, ref] = readout
    return model, tok, {"recognition": rec, "refusal": ref}


def wired_prompts(markers: dict[str, str] = MARKERS, splits: tuple[str, ...] = ("train",) * 8 + ("val",) * 2
                  + ("test",) * 8) -> PromptSet:
    """Per entry of ``splits``, one toxic prompt per category (its marker three times among words) and one safe
    prompt (words only)."""
    recs = []
    for i, split in enumerate(splits):
        words = [WORDS[(i * 5 + j) % len(WORDS)] for j in range(3 + i % 4)]
        for cat, mark in markers.items():
            text = " ".join(w for pair in zip(words, [mark] * 3 + [""] * 4) for w in pair if w)
            recs.append(PromptRecord(f"w:toxic:{cat}:{i}", text, cat, "toxic", "wired", split))
        recs.append(PromptRecord(f"w:safe:{i}", " ".join(words + WORDS[i % 3: i % 3 + 2]), "benign", "safe", "wired",
                                 split))
    return PromptSet(recs)


def save_wired(directory, design: str, markers: dict[str, str] = MARKERS, seed: int = 0):
    """Write the wired model and its tokenizer as a Hugging Face directory (``model=hf model.path=...``)."""
    model, tok, _ = wired_llama(design, list(markers.values()), seed=seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@torch.no_grad()
def signed_basis_sae(d: int) -> SparseAutoencoder:
    """A ReLU SAE with 2d latents, relu(x_i) and relu(−x_i): exact reconstruction, one latent per sign of each
    residual dimension, so each wired dimension is one latent (a dictionary aligned with the mechanism by
    construction; a trained SAE need not be)."""
    sae = SparseAutoencoder(d, 2 * d, "relu_l1")
    eye = torch.eye(d)
    sae.W_enc.copy_(torch.cat([eye, -eye], 1))
    sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    sae.b_enc.zero_()
    sae.b_dec.zero_()
    return sae


def exact_train_dir(out, prompts: PromptSet, hooks: list[str], model_name: str, d_model: int = 64) -> Path:
    """A finished train run dir (refusal.runs.TrainRun: prompts, data analysis, SAEs, manifest) with the
    signed-basis SAE at every hook instead of trained ones."""
    run = TrainRun(Path(out))
    run.write_prompts(prompts, analyze_splits(prompts, {"min_toxic_per_category": 1}))
    dirs = {h: str(save_saelens(signed_basis_sae(d_model), run.saes / h, h, model_name)) for h in hooks}
    run.write_manifest({"model": model_name, "hooks": hooks, "sae_dirs": dirs, "prompts_hash": prompts.content_hash(),
                        "metrics": {f"val/{h}/{m}": 1.0 for h in hooks for m in ("explained_variance", "l0")}})
    return run.dir
