"""SAEs spliced into the model at hooked points: at the node positions (the last P tokens) the activation x is
replaced by ``decode(f) + e`` with ``f = encode(x)`` and the error node ``e = x - decode(f)``, so the output is
unchanged while f and e become tensors whose gradients can be read.

Modes per hooked point (one :func:`splice` call may mix them):

- ``read``: f and e are fresh leaves (requires_grad) holding the clean values; the output is
  ``x + (decode(f) + e - x.detach())`` — the same value as x, gradient 1 towards x (so the gradient reaching an
  upstream hook is the full one, i.e. the sum over the paths through this hook's features and error node), and
  ``f.grad = dm/df``, ``e.grad = dm/de``. One backward gives the gradient of every node of every hook.
- ``set``: the output at the node positions is ``decode(f) + e`` for given f, e (e.g. patch values, an
  interpolation, or leaves for a Jacobian); the upstream path through those positions is cut.
- ``capture``: record f and e (detached); the activation is left as it is.
- ``observe``: record f and e as functions of x (graph kept) — the downstream end of an edge; the forward stops
  after the last observed hook when ``stop_after_observe``.
- ``relay``: ``observe``, then ``set`` — the downstream end of one edge layer and the upstream end of the next.
Every mode records ``(f, e)`` in the yielded dict (``relay``: the observed ones).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from refusal.model.chat import EncodedBatch
from refusal.model.hooks import HOOK_KINDS, HookSpec, StopForward, decoder_layers, parse_hook_name, register_edit
from refusal.model.tail import PrefixKV, tail_forward
from refusal.sae.model import SparseAutoencoder

MODES = ("read", "set", "capture", "observe", "relay")


@dataclass
class HookedSAE:
    hook: str
    sae: SparseAutoencoder
    path: str = ""
    weights_hash: str = ""




def _stop_spec(spec: HookSpec) -> HookSpec:
    return spec if spec.kind == "hook_resid_pre" else HookSpec(spec.layer, HOOK_KINDS.index("hook_resid_post"))


@contextlib.contextmanager
def splice(model: nn.Module, saes: dict[str, HookedSAE], n_positions: int, modes: dict[str, str],
           values: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
           stop_after_observe: bool = True) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Splice the SAEs of ``modes`` (hook -> mode) at the last ``n_positions`` tokens; yields {hook: (f, e)}.
    ``values[hook] = (f, e)`` ([B or 1, P, d_sae], [B or 1, P, d]) for ``set`` hooks."""
    layers = decoder_layers(model)
    record: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    P = n_positions

    def make(hook: str, mode: str):
        sae = saes[hook].sae

        def fn(x: torch.Tensor) -> torch.Tensor:
            head, tail = x[:, :-P], x[:, -P:]
            if mode == "capture":
                with torch.no_grad():
                    f = sae.encode(tail)
                    record[hook] = (f, tail - sae.decode(f).to(tail.dtype))
                return x
            if mode in ("observe", "relay"):
                f = sae.encode(tail)
                record[hook] = (f, tail - sae.decode(f).to(tail.dtype))
                if mode == "observe":
                    return x
            if mode == "read":
                with torch.no_grad():
                    f = sae.encode(tail)
                f.requires_grad_(True)
                x_hat = sae.decode(f).to(tail.dtype)
                e = (tail.detach() - x_hat.detach()).requires_grad_(True)
                new_tail = tail + (x_hat + e - tail.detach())
            else:  # set, relay
                f, e = values[hook]
                new_tail = (sae.decode(f) + e).to(tail.dtype).expand_as(tail)
            if mode != "relay":
                record[hook] = (f, e)
            return torch.cat([head, new_tail], dim=1)
        return fn

    n_layers = len(layers)
    specs = {h: parse_hook_name(h, n_layers) for h in modes}
    try:
        for hook, mode in modes.items():
            if mode not in MODES:
                raise ValueError(mode)
            spec = specs[hook]
            handles.append(register_edit(layers[spec.layer], spec, make(hook, mode)))
        observed = [specs[h] for h, m in modes.items() if m in ("observe", "relay")]
        if observed and stop_after_observe:
            stop = _stop_spec(max(observed))

            def raise_stop(x):
                raise StopForward
            handles.append(register_edit(layers[stop.layer], stop, raise_stop))
        yield record
    finally:
        for h in handles:
            h.remove()


def run_model(model: nn.Module, enc: EncodedBatch, kv: PrefixKV | None = None) -> torch.Tensor | None:
    """Logits of ``enc`` at the last position [B, V], or None when a splice stopped the forward early. With ``kv``
    (the clean KV cache of ``enc`` minus its last tokens, refusal.model.tail) only those last tokens are forwarded."""
    try:
        if kv is None:
            return model(**enc.model_inputs(), use_cache=False, logits_to_keep=1).logits[:, -1]
        return tail_forward(model, enc, kv, logits_to_keep=1).logits[:, -1]
    except StopForward:
        return None
