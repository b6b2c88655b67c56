"""Abliteration (weight orthogonalisation; Arditi et al. 2024): the refusal direction r̂ removed from every weight
that writes to the residual stream (the token embedding, each layer's attention output projection and MLP down
projection, and their biases), W ← W − r̂ r̂ᵀ W, so the edited model computes what the directional-ablation hooks
compute (x ← x − (x·r̂) r̂ at resid_pre, attention output and MLP output of every layer), with no hooks. A tied output
head is untied first and keeps the original embedding (the hooks never touch the unembedding).

``export_abliterated`` writes the edited model as a Hugging Face model dir (weights, config, tokenizer, ABLITERATED.md
saying what was removed) that ``model=hf model.path=<dir>`` loads.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from refusal.model.hooks import decoder_layers

WRITERS = ("self_attn.o_proj", "mlp.down_proj")
CARD = "ABLITERATED.md"


def _untie(model: nn.Module) -> bool:
    """Give the output head its own copy of the embedding if the two share it; whether they did."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    return True


@torch.no_grad()
def orthogonalise(model: nn.Module, direction: Tensor) -> dict:
    """Remove ``direction`` [d] from ``model``'s residual-stream writers in place (module doc); what was edited."""
    r = direction.double() / direction.double().norm()
    untied = _untie(model)
    emb = model.get_input_embeddings().weight  # [vocab, d]: rows are residual vectors
    emb.copy_((emb.double() - (emb.double() @ r)[:, None] * r).to(emb.dtype))
    edited = ["model.embed_tokens.weight"]
    for i, layer in enumerate(decoder_layers(model)):
        for name in WRITERS:
            lin = layer.get_submodule(name)
            w = lin.weight  # [d, in]: columns are residual vectors
            w.copy_((w.double() - r[:, None] * (r @ w.double())[None, :]).to(w.dtype))
            edited.append(f"model.layers.{i}.{name}.weight")
            if lin.bias is not None:
                lin.bias.copy_((lin.bias.double() - (lin.bias.double() @ r) * r).to(lin.bias.dtype))
                edited.append(f"model.layers.{i}.{name}.bias")
    return {"edited": edited, "untied_output_head": untied}


def card_text(source: dict, edits: dict) -> str:
    lines = ["# Abliterated model (refusal-circuits)", "",
             "The refusal direction below was removed from every weight that writes to the residual stream (token "
             "embedding, attention output and MLP down projections of every layer): the model computes what the "
             "direction stage's directional ablation computes, without hooks. NOT a production chat model.", "",
             "```json", json.dumps({"source": source, "untied_output_head": edits["untied_output_head"],
                                    "n_edited_tensors": len(edits["edited"])}, indent=1), "```", "",
             f"Load it: `python evaluate.py model=hf model.path=<this dir> model.name={source.get('name_hint')}`"
             + (f" model.system_prompt='{source['system_prompt']}'" if source.get("system_prompt") else "")]
    return "\n".join(lines) + "\n"


def export_abliterated(loaded, direction: Tensor, directory: Path, source: dict) -> dict:
    """Write a copy of ``loaded``'s model with ``direction`` orthogonalised out into ``directory`` (a temp name,
    renamed when complete); what was edited."""
    directory = Path(directory)
    model = copy.deepcopy(loaded.model)
    edits = orthogonalise(model, direction.to(next(model.parameters()).device))
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
        (tmp / CARD).write_text(card_text(source, edits))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return edits


def export_and_measure(ctx, r: Tensor, selected: dict, s, out_dir: Path) -> tuple[dict, list[dict]]:
    """``evaluation.direction.export``: write ``out_dir/abliterated`` (``export_abliterated``), load it back with the
    project's own loader (``model=hf``), and measure it on the evaluation split: its generated refusal rates (rows
    with condition ``abliterated``) and, on the safe prompts, the largest difference between its next-token logits
    and those of the directional-ablation hooks on the original model. (the export block, the rate rows)"""
    from omegaconf import OmegaConf

    from refusal.evaluation.interventions import ARDITI_KINDS, directional_ablation, intervene
    from refusal.evaluation.measure import last_logits
    from refusal.model.chat import ChatFormatter
    from refusal.model.loading import load_model

    directory = Path(out_dir) / "abliterated"
    loaded = ctx.loaded
    source = {"model": loaded.name, "name_hint": f"{loaded.name}-abliterated", "method": s.method,
              "layer": selected["layer"], "position": selected["position"], "norm": float(r.norm()),
              "system_prompt": loaded.system_prompt, "run_dir": str(Path(out_dir).resolve())}
    edits = export_abliterated(loaded, r, directory, source)
    cfg = OmegaConf.create({"source": "hf", "path": str(directory), "name": source["name_hint"], "dtype": "float32",
                            "device": str(next(loaded.model.parameters()).device),
                            "system_prompt": loaded.system_prompt, "refusal_tokens": loaded.refusal_tokens})
    exported = load_model(cfg)
    fmt = ChatFormatter(exported.tokenizer, ctx.formatter.system_prompt, ctx.formatter.max_length)
    other = dataclasses.replace(ctx, loaded=exported, formatter=fmt, _generations={})
    safe = [x.prompt for x in ctx.prompts.filter(label="safe")]
    with intervene(loaded.model, directional_ablation(r, loaded.n_layers, s.ablation_hooks)):
        hooked = last_logits(loaded.model, ctx.formatter, safe, ctx.batch_size)
    diff = float((last_logits(exported.model, fmt, safe, ctx.batch_size) - hooked).abs().max()) if safe else None
    records = [x for lb in ("toxic", "hard", "safe") for x in ctx.prompts.filter(label=lb)]
    items = other.generate(records, name="direction_abliterated")
    rows = other.condition_rows(items, "abliterated")
    block = {"dir": str(directory), "n_edited_tensors": len(edits["edited"]),
             "untied_output_head": edits["untied_output_head"], "max_logit_diff_vs_hooks": diff,
             "hooks_match_weights": tuple(s.ablation_hooks) == tuple(ARDITI_KINDS),
             "load": f"model=hf model.path={directory}"}
    return block, rows
