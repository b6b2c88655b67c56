"""Hook points by TransformerLens names on Llama-family decoders (Llama, Mistral, Qwen2, Gemma2, SmolLM2).

``blocks.{L}.hook_resid_pre``   input of decoder layer L
``blocks.{L}.hook_resid_post``  output of decoder layer L
``blocks.{L}.hook_attn_out``    output of the attention block of layer L
``blocks.{L}.hook_mlp_out``     output of the MLP of layer L
``blocks.{L}.mlp.hook_post``    MLP neurons (the input of down_proj)
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from refusal.errors import ConfigError

HOOK_KINDS = ("hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
_HOOK_RE = re.compile(r"^blocks\.(-?\d+)\.(" + "|".join(re.escape(k) for k in HOOK_KINDS) + r")$")


@dataclass(frozen=True, order=True)
class HookSpec:
    layer: int
    order: int  # position of the hook inside its layer (HOOK_KINDS order)

    @property
    def kind(self) -> str:
        return HOOK_KINDS[self.order]

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.kind}"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{type(model).__name__} is not a Llama-family decoder (no model.model.layers)")
    return layers


def parse_layers(spec, n_layers: int) -> list[int]:
    """Layer spec -> sorted layer indices. int, list, "all", "mid", "a-b" (inclusive), negatives from the end."""
    if isinstance(spec, str):
        s = spec.strip()
        if s == "all":
            return list(range(n_layers))
        if s == "mid":
            return [n_layers // 2]
        m = re.fullmatch(r"(-?\d+)-(-?\d+)", s)
        if m:
            lo, hi = (parse_layers(int(g), n_layers)[0] for g in m.groups())
            return list(range(lo, hi + 1))
        if re.fullmatch(r"-?\d+", s):
            return parse_layers(int(s), n_layers)
        raise ConfigError(f"layer spec {spec!r} is not valid; use an int, a list, 'all', 'mid' or 'a-b'")
    if isinstance(spec, int):
        layer = spec + n_layers if spec < 0 else spec
        if not 0 <= layer < n_layers:
            raise ConfigError(f"layer {spec} is out of range; the model has layers 0..{n_layers - 1}")
        return [layer]
    out: set[int] = set()
    for item in spec:
        out.update(parse_layers(item, n_layers))
    return sorted(out)


def layer_spec(key: str, value):
    """``value`` when it has the form of a layer spec (checked before a model is loaded, so its range is checked
    later against the model), else a one-line ConfigError naming ``key``."""
    try:
        parse_layers(value, 10**6)
    except (ConfigError, TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not valid; use all, mid, an int, a list or 'a-b'") from None
    return value


def parse_hook_name(name: str, n_layers: int) -> HookSpec:
    m = _HOOK_RE.match(name)
    if not m:
        raise ConfigError(f"hook {name!r} is not valid; use blocks.<layer>.<kind> with kind in {list(HOOK_KINDS)}")
    layer = parse_layers(int(m.group(1)), n_layers)[0]
    return HookSpec(layer, HOOK_KINDS.index(m.group(2)))


def expand_hook_names(hook_points, layers, n_layers: int) -> list[str]:
    """hook_points (kinds like ``hook_resid_post``) × layers spec -> canonical hook names, in model order."""
    kinds = [hook_points] if isinstance(hook_points, str) else list(hook_points)
    for k in kinds:
        if k not in HOOK_KINDS:
            raise ConfigError(f"hook point {k!r} is not valid; choose from {list(HOOK_KINDS)}")
    specs = sorted(HookSpec(layer, HOOK_KINDS.index(k)) for layer in parse_layers(layers, n_layers) for k in kinds)
    return [s.name for s in specs]


def hook_width(model: nn.Module, hook_name: str) -> int:
    """Width of the activation at a hook: the MLP width for ``mlp.hook_post``, else the residual width."""
    cfg = model.config
    return int(cfg.intermediate_size if hook_name.endswith("mlp.hook_post") else cfg.hidden_size)


def register_edit(layer: nn.Module, spec: HookSpec, fn):
    """Register ``fn(x) -> x'`` replacing the activation at ``spec`` inside decoder ``layer``; returns the handle."""
    if spec.kind == "hook_resid_pre":
        def pre(m, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
        return layer.register_forward_pre_hook(pre, with_kwargs=True)
    if spec.kind == "mlp.hook_post":
        return layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: (fn(args[0]), *args[1:]))
    module = {"hook_attn_out": layer.self_attn, "hook_mlp_out": layer.mlp, "hook_resid_post": layer}[spec.kind]

    def post(m, args, out):
        if isinstance(out, tuple):
            return (fn(out[0]), *out[1:])
        return fn(out)
    return module.register_forward_hook(post)


class StopForward(Exception):
    """Raised by a hook to end the forward after the deepest hooked point."""


def _register(layer: nn.Module, spec: HookSpec, fn: Callable[[torch.Tensor], None]):
    """Register ``fn(activation)`` at ``spec`` inside ``layer``; return the handle."""
    def first(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    if spec.kind == "hook_resid_pre":
        return layer.register_forward_pre_hook(
            lambda m, args, kwargs: fn(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
        )
    if spec.kind == "mlp.hook_post":
        return layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: fn(args[0]))
    module = {"hook_attn_out": layer.self_attn, "hook_mlp_out": layer.mlp, "hook_resid_post": layer}[spec.kind]
    return module.register_forward_hook(lambda m, args, out: fn(first(out)))


@contextlib.contextmanager
def capture_activations(model: nn.Module, hook_names: list[str], stop_early: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Fill the yielded dict with ``{hook_name: activation [B, T, d]}`` (detached) during forwards run inside.

    With ``stop_early`` the forward raises :class:`StopForward` right after the deepest hook; call the model
    through :func:`run_until_stop` so it is caught.
    """
    layers = decoder_layers(model)
    specs = [parse_hook_name(h, len(layers)) for h in hook_names]
    cache: dict[str, torch.Tensor] = {}
    handles = []

    def store(name):
        def fn(x):
            cache[name] = x.detach()
        return fn

    def stop(_x):
        raise StopForward

    try:
        for spec in specs:
            handles.append(_register(layers[spec.layer], spec, store(spec.name)))
        if stop_early:
            deepest = max(specs)
            stop_spec = deepest if deepest.kind == "hook_resid_pre" else HookSpec(deepest.layer, HOOK_KINDS.index("hook_resid_post"))
            handles.append(_register(layers[stop_spec.layer], stop_spec, stop))
        yield cache
    finally:
        for h in handles:
            h.remove()


def run_until_stop(fn: Callable[[], object]):
    """Call ``fn``; return its result, or None when a hook stopped the forward early."""
    try:
        return fn()
    except StopForward:
        return None


def resid_pre_batches(model: nn.Module, formatter, prompts: list[str], layers: list[int], batch_size: int,
                      responses: list[str] | None = None):
    """For each batch of ``prompts`` (chat-formatted by ``formatter``, each followed by its entry of ``responses``
    when given; on the model's device): (the encoded batch, [resid_pre at each of ``layers``, [B, T, d]]), from a
    forward that stops after the deepest of them."""
    device = next(model.parameters()).device
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    for start in range(0, len(prompts), batch_size):
        chunk = None if responses is None else responses[start:start + batch_size]
        enc = formatter.encode(prompts[start:start + batch_size], chunk).to(device)
        with capture_activations(model, hooks, stop_early=True) as cache:
            run_until_stop(lambda: model(**enc.model_inputs(), use_cache=False))
        yield enc, [cache[h] for h in hooks]
