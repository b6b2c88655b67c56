"""Model components for activation patching and ablation, at the last ``n_pos`` prompt tokens (the post-instruction
tokens, aligned from the end so prompts of any length line up):

- ``resid``: the residual stream at one of those positions, at ``blocks.{L}.hook_resid_pre`` (or ``_post``);
- ``head``: one attention head's output at all of them: its slice of the input of ``self_attn.o_proj`` (the heads'
  concatenated outputs z, TransformerLens ``attn.hook_z``; the head writes z_h W_O,hᵀ into the residual stream);
- ``mlp``: the MLP output ``blocks.{L}.hook_mlp_out`` at all of them.

:func:`capture` reads every component's activation and the refusal score in one forward per batch; :func:`edit_sites`
replaces components' activations with given values (one row per prompt, or one row for all) in every prefill forward
run inside, leaving cached decoding steps alone; :func:`site_scores` measures the refusal score under such edits with
the same batches as :func:`capture`, so a run without edits reproduces its scores bit for bit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from refusal.behavior.score import refusal_score
from refusal.evaluation.interventions import cached_length
from refusal.model.hooks import HOOK_KINDS, HookSpec, capture_activations, decoder_layers, register_edit

KINDS = ("resid", "head", "mlp")


@dataclass(frozen=True, order=True)
class Site:
    kind: str  # resid | head | mlp
    layer: int
    index: int = 0  # resid: position 0..n_pos-1 (0 = the first post-instruction token); head: the head; mlp: 0

    @property
    def label(self) -> str:
        return {"resid": f"L{self.layer}.p{self.index}", "head": f"L{self.layer}.H{self.index}",
                "mlp": f"L{self.layer}.MLP"}[self.kind]


def head_dim(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def n_heads(model: nn.Module) -> int:
    return int(model.config.num_attention_heads)


@dataclass
class Acts:
    """Activations at the last ``n_pos`` tokens of n prompts (float32, CPU), layers in ``layers`` order:
    resid [n, L, n_pos, d], z (heads' outputs, concatenated) [n, L, n_pos, H·dh], mlp [n, L, n_pos, d]."""
    layers: list[int]
    resid: Tensor
    z: Tensor
    mlp: Tensor

    def value(self, site: Site, rows, dh: int) -> Tensor:
        """[len(rows), P, W]: the site's activation for ``rows`` (an index, list or slice of prompts)."""
        li = self.layers.index(site.layer)
        if site.kind == "resid":
            return self.resid[rows, li, site.index:site.index + 1]
        if site.kind == "head":
            return self.z[rows, li, :, site.index * dh:(site.index + 1) * dh]
        return self.mlp[rows, li]

    def select(self, rows) -> "Acts":
        return Acts(self.layers, self.resid[rows], self.z[rows], self.mlp[rows])

    def mean(self) -> "Acts":
        return Acts(self.layers, *(x.double().mean(0, keepdim=True).float() for x in (self.resid, self.z, self.mlp)))


def _batches(ctx, prompts: list[str]):
    device = next(ctx.model.parameters()).device
    for start in range(0, len(prompts), ctx.batch_size):
        yield start, ctx.formatter.encode(prompts[start:start + ctx.batch_size]).to(device)


def _logits(model, enc) -> Tensor:
    return model(**enc.model_inputs(), use_cache=False, logits_to_keep=1).logits[:, -1]


@torch.inference_mode()
def capture(ctx, prompts: list[str], layers: list[int], n_pos: int, resid_hook: str) -> tuple[Acts, Tensor]:
    """(every component's activations at the last ``n_pos`` tokens of ``prompts`` at ``layers``, [n] float64
    refusal scores), one full forward per batch."""
    model, blocks = ctx.model, decoder_layers(ctx.model)
    hooks = [f"blocks.{layer}.{k}" for layer in layers for k in (resid_hook, "hook_mlp_out")]
    out = {"resid": [], "z": [], "mlp": []}
    scores = []
    for _, enc in _batches(ctx, prompts):
        z: dict[int, Tensor] = {}
        handles = [blocks[layer].self_attn.o_proj.register_forward_pre_hook(
            lambda m, args, layer=layer: z.__setitem__(layer, args[0][:, -n_pos:].detach())) for layer in layers]
        try:
            with capture_activations(model, hooks, stop_early=False) as cache:
                logits = _logits(model, enc)
        finally:
            for h in handles:
                h.remove()
        out["resid"].append(torch.stack([cache[f"blocks.{lay}.{resid_hook}"][:, -n_pos:] for lay in layers], 1))
        out["mlp"].append(torch.stack([cache[f"blocks.{lay}.hook_mlp_out"][:, -n_pos:] for lay in layers], 1))
        out["z"].append(torch.stack([z[lay] for lay in layers], 1))
        scores.append(refusal_score(logits, ctx.refusal_token_ids).cpu())
    return Acts(list(layers), *(torch.cat(out[k]).float().cpu() for k in ("resid", "z", "mlp"))), torch.cat(scores)


def _replace(x: Tensor, value: Tensor, pos: slice, cols: slice) -> Tensor:
    out = x.clone()
    out[:, pos, cols] = value.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
    return out


@contextlib.contextmanager
def edit_sites(model: nn.Module, edits: Sequence[tuple[Site, Tensor]], n_pos: int,
               resid_hook: str = "hook_resid_pre") -> Iterator[None]:
    """Inside, every prefill forward has each site's activation replaced by its value ([B or 1, P, W], P = 1 for a
    resid site, else ``n_pos``; aligned with the last ``n_pos`` tokens); cached decoding steps are left alone."""
    blocks = decoder_layers(model)
    dh = head_dim(model)
    state = {"on": True}

    def track(module, args, kwargs):
        state["on"] = cached_length(kwargs) == 0

    def editor(pos_of: Callable[[int], slice], cols: slice, value: Tensor):
        def fn(x: Tensor) -> Tensor:
            return _replace(x, value, pos_of(x.shape[1]), cols) if state["on"] else x
        return fn

    handles = [blocks[0].register_forward_pre_hook(track, with_kwargs=True)]
    try:
        for site, value in edits:
            layer = blocks[site.layer]
            if site.kind == "resid":
                pos = site.index
                fn = editor(lambda T, p=pos: slice(T - n_pos + p, T - n_pos + p + 1), slice(None), value)
                handles.append(register_edit(layer, HookSpec(site.layer, HOOK_KINDS.index(resid_hook)), fn))
            elif site.kind == "mlp":
                fn = editor(lambda T: slice(T - n_pos, T), slice(None), value)
                handles.append(register_edit(layer, HookSpec(site.layer, HOOK_KINDS.index("hook_mlp_out")), fn))
            else:
                fn = editor(lambda T: slice(T - n_pos, T), slice(site.index * dh, (site.index + 1) * dh), value)
                handles.append(layer.self_attn.o_proj.register_forward_pre_hook(
                    lambda m, args, fn=fn: (fn(args[0]), *args[1:])))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def site_scores(ctx, prompts: list[str], edits_for: Callable[[slice], list[tuple[Site, Tensor]]], n_pos: int,
                resid_hook: str) -> Tensor:
    """[n] float64 refusal scores of ``prompts`` with ``edits_for(rows)`` (the edits of the batch holding those
    prompt rows) in place; the batches of :func:`capture`."""
    scores = []
    for start, enc in _batches(ctx, prompts):
        rows = slice(start, start + enc.input_ids.shape[0])
        with edit_sites(ctx.model, edits_for(rows), n_pos, resid_hook):
            scores.append(refusal_score(_logits(ctx.model, enc), ctx.refusal_token_ids).cpu())
    return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)


def all_sites(kinds: Sequence[str], layers: list[int], n_pos: int, heads: int) -> list[Site]:
    """Every site of ``kinds`` at ``layers``, in model order within each kind."""
    out = []
    for kind in kinds:
        per = {"resid": n_pos, "head": heads, "mlp": 1}[kind]
        out += [Site(kind, layer, i) for layer in layers for i in range(per)]
    return out
