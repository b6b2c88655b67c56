"""Interventions on a running model, as context managers that work for plain forwards and for ``model.generate``
with the KV cache.

Each intervention edits the activation at one hook point (TransformerLens names, refusal.model.hooks):

- :class:`FeatureEdit` — SAE features at a hook, with the SAE error term kept: f = encode(x), f' = f with the chosen
  features changed, x ← x + (f' − f) W_dec (so only the chosen features change; x − decode(f) stays as it was).
  ``mean``: f_S ← f̄_S (mean ablation, x ← x − W_dec[S]ᵀ(f_S − f̄_S)); ``zero``: f_S ← 0; ``clamp``: f_S ← value;
  ``scale``: f_S ← value · f_S. Optionally the error node e = x − decode(f) is set too (``mean``: ē, ``zero``: 0).
- :class:`Reconstruct` — x ← decode(encode(x)) (the SAE spliced in without its error term).
- :class:`ZeroAblate` — x ← 0.
- :class:`DirectionalAblation` — x ← x − (x·r̂) r̂; :func:`directional_ablation` places one at every layer and hook
  kind (Arditi et al. 2024: resid_pre of every layer plus the attention and MLP outputs).
- :class:`ActAdd` — x ← x + c·r.
- :class:`ProjectionClamp` — x ← x + (v − x·r̂) r̂: the component along r̂ set to v (v = 0 is directional
  ablation; v = a mean projection is mean ablation along r̂), with one direction and value per selected position
  or one for all.
- :class:`NeuronEdit` — chosen MLP neurons (``blocks.{l}.mlp.hook_post``, the down projection's input): ``scale``
  a_n ← value · a_n, ``clamp`` a_n ← value.

Positions (:func:`intervene`): ``positions=None`` edits every position of every forward, generated tokens included;
``positions=n`` edits the last ``n`` tokens of every forward that starts at position 0 (a prompt's prefill, e.g. the
post-instruction tokens where circuit nodes live) and leaves later decoding steps alone. Generation must use the
KV cache (the Hugging Face default) for ``positions=n``: without it every step re-reads the prompt from position 0.
Inside :func:`prompt_continuation`, a forward over a KV cache is the rest of a prompt (its last tokens after a clean
cached prefix, refusal.evaluation.prefix), not a decoding step, and ``positions=n`` edits its last n tokens;
:func:`edited_tail` says how many last tokens the active interventions may edit (None: every position).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor, nn

from refusal.errors import check_choice
from refusal.model.hooks import HOOK_KINDS, HookSpec, decoder_layers, parse_hook_name, register_edit
from refusal.sae.model import SparseAutoencoder

FEATURE_MODES = ("mean", "zero", "clamp", "scale")
ARDITI_KINDS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
NEURON_MODES = ("scale", "clamp")


class Intervention(Protocol):
    hook: str

    def edit(self, x: Tensor) -> Tensor:
        """The new activation for ``x`` [B, T_sel, d] (the selected positions of one forward)."""


def _as(value, like: Tensor) -> Tensor:
    return torch.as_tensor(value, device=like.device, dtype=like.dtype)


@dataclass
class FeatureEdit:
    """Change the SAE features ``features`` (bool [d_sae], or [P, d_sae] per selected position) at ``hook``."""
    hook: str
    sae: SparseAutoencoder
    features: Tensor
    mode: str = "mean"
    value: Tensor | float | None = None  # mean: f̄ ([d_sae] or [P, d_sae]); clamp: the value(s); scale: the factor
    error: Tensor | bool = False  # also set the error node (bool, or bool [P] per selected position); mean/zero
    error_value: Tensor | None = None  # mean: ē ([d] or [P, d])

    def __post_init__(self):
        check_choice("feature edit mode", self.mode, FEATURE_MODES)
        if self.mode in ("mean", "clamp", "scale") and self.value is None:
            raise ValueError(f"feature edit mode {self.mode!r} needs a value")
        has_error = bool(torch.as_tensor(self.error).any())
        if has_error and self.mode not in ("mean", "zero"):
            raise ValueError(f"the error node can only be mean- or zero-ablated, not {self.mode!r}")
        if has_error and self.mode == "mean" and self.error_value is None:
            raise ValueError("mean ablation of the error node needs error_value (ē)")

    def edit(self, x: Tensor) -> Tensor:
        sae = self.sae
        xs = x.to(sae.W_enc.dtype)
        f = sae.encode(xs)
        mask = self.features.to(device=f.device, dtype=torch.bool)
        if self.mode == "zero":
            target = torch.zeros((), device=f.device, dtype=f.dtype)
        elif self.mode == "scale":
            target = f * _as(self.value, f)
        else:
            target = _as(self.value, f)
        delta = (torch.where(mask, target, f) - f) @ sae.W_dec / sae.input_scale
        err = torch.as_tensor(self.error, device=f.device, dtype=torch.bool)
        if bool(err.any()):
            e = xs - sae.decode(f)
            zero = torch.zeros((), device=f.device, dtype=f.dtype)
            e_target = zero if self.mode == "zero" else _as(self.error_value, f)
            delta = delta + torch.where(err[..., None], e_target - e, zero)
        return (xs + delta).to(x.dtype)


@dataclass
class Reconstruct:
    hook: str
    sae: SparseAutoencoder

    def edit(self, x: Tensor) -> Tensor:
        return self.sae.decode(self.sae.encode(x.to(self.sae.W_enc.dtype))).to(x.dtype)


@dataclass
class ZeroAblate:
    hook: str

    def edit(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


@dataclass
class DirectionalAblation:
    hook: str
    direction: Tensor  # [d]; normalised here

    def edit(self, x: Tensor) -> Tensor:
        r = self.direction.to(device=x.device, dtype=torch.float32)
        r = r / r.norm().clamp_min(1e-12)
        xf = x.float()
        return (xf - (xf @ r)[..., None] * r).to(x.dtype)


@dataclass
class ActAdd:
    hook: str
    vector: Tensor  # [d], added as is (not normalised)
    coeff: float = 1.0

    def edit(self, x: Tensor) -> Tensor:
        return (x.float() + self.coeff * self.vector.to(device=x.device, dtype=torch.float32)).to(x.dtype)


@dataclass
class ProjectionClamp:
    hook: str
    direction: Tensor  # [d], or [P, d] one per selected position; normalised here
    value: Tensor | float = 0.0  # the projection to set: a number, or [P] one per selected position

    def edit(self, x: Tensor) -> Tensor:
        r = self.direction.to(device=x.device, dtype=torch.float32)
        r = r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        xf = x.float()
        v = torch.as_tensor(self.value, device=x.device, dtype=torch.float32)
        return (xf + (v - (xf * r).sum(-1))[..., None] * r).to(x.dtype)


@dataclass
class NeuronEdit:
    hook: str  # blocks.{l}.mlp.hook_post
    neurons: Tensor  # long [k]
    mode: str  # scale | clamp
    value: Tensor | float  # the factor or the value: a number or one per neuron [k]

    def __post_init__(self):
        check_choice("neuron edit mode", self.mode, NEURON_MODES)
        if not self.hook.endswith(".mlp.hook_post"):
            raise ValueError(f"a neuron edit acts at blocks.<layer>.mlp.hook_post, not {self.hook!r}")

    def edit(self, x: Tensor) -> Tensor:
        idx = torch.as_tensor(self.neurons, device=x.device, dtype=torch.long)
        value = _as(self.value, x)
        out = x.clone()
        out[..., idx] = x[..., idx] * value if self.mode == "scale" else value.expand_as(x[..., idx])
        return out


def directional_ablation(direction: Tensor, n_layers: int, kinds: Sequence[str] = ARDITI_KINDS,
                         layers: Sequence[int] | None = None) -> list[DirectionalAblation]:
    """One :class:`DirectionalAblation` per layer (default all) and hook kind."""
    for k in kinds:
        check_choice("directional ablation hook kind", k, HOOK_KINDS)
    return [DirectionalAblation(f"blocks.{layer}.{k}", direction) for layer in (layers or range(n_layers))
            for k in kinds]




def cached_length(layer_kwargs: dict, layer_idx: int = 0) -> int:
    """Tokens already in decoder layer ``layer_idx``'s KV cache when that layer is called with ``layer_kwargs`` (0 in a
    prefill). It must be the called layer's own entry: the layers before it have already added this forward's tokens
    to theirs. The cache is passed as ``past_key_values`` (transformers 4.x), ``past_key_value`` or ``cache`` (5.x)."""
    for name in ("past_key_values", "past_key_value", "cache"):
        cache = layer_kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length(layer_idx))
    return 0


_CONTINUATION: contextvars.ContextVar[bool] = contextvars.ContextVar("prompt_continuation", default=False)
_ACTIVE: contextvars.ContextVar[tuple] = contextvars.ContextVar("intervention_positions", default=())


@contextlib.contextmanager
def prompt_continuation() -> Iterator[None]:
    """Inside, a forward over a KV cache holding a clean prefix of the same prompts is the prompts' end (not a
    decoding step): ``intervene(..., positions=n)`` edits its last n tokens."""
    token = _CONTINUATION.set(True)
    try:
        yield
    finally:
        _CONTINUATION.reset(token)


def edited_tail() -> int | None:
    """How many last prompt tokens the active ``intervene`` blocks may edit: 0 when none is active, None when one edits
    every position (then no prefix of a prompt is left as it was)."""
    active = _ACTIVE.get()
    if any(p is None for p in active):
        return None
    return max(active, default=0)


@contextlib.contextmanager
def intervene(model: nn.Module, interventions: Sequence[Intervention], positions: int | None = None) -> Iterator[None]:
    """Apply ``interventions`` (in order; several at one hook compose) to every forward run inside.

    ``positions``: None = every position of every forward; n = the last n tokens of each forward that starts at
    position 0 (a prefill), nothing in later (cached) decoding steps."""
    if positions is not None and (isinstance(positions, bool) or not isinstance(positions, int) or positions < 1):
        raise ValueError(f"positions={positions!r}: use None (all) or an int >= 1")
    layers = decoder_layers(model)
    state: dict[str, slice | None] = {"sel": slice(None)}

    def track(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        if positions is None:
            state["sel"] = slice(None)
            return
        past = cached_length(kwargs, first)
        T = hs.shape[1]
        if past > 0 and not _CONTINUATION.get():
            state["sel"] = None
        elif T < positions:
            raise ValueError(f"a forward of {T} tokens has fewer than positions={positions}")
        else:
            state["sel"] = slice(T - positions, T)

    def wrap(iv: Intervention):
        def fn(x: Tensor) -> Tensor:
            sel = state["sel"]
            if sel is None:
                return x
            if sel == slice(None):
                return iv.edit(x)
            return torch.cat([x[:, :sel.start], iv.edit(x[:, sel]), x[:, sel.stop:]], dim=1)
        return fn

    specs = [parse_hook_name(iv.hook, len(layers)) for iv in interventions]
    # The first intervened layer reads the forward's length and cache (a forward may skip earlier layers:
    # refusal.evaluation.prefix).
    first = min((spec.layer for spec in specs), default=0)
    handles = [layers[first].register_forward_pre_hook(track, with_kwargs=True)]
    token = _ACTIVE.set(_ACTIVE.get() + ((positions,) if interventions else ()))
    try:
        for iv, spec in zip(interventions, specs):
            handles.append(register_edit(layers[spec.layer], spec, wrap(iv)))
        yield
    finally:
        _ACTIVE.reset(token)
        for h in handles:
            h.remove()
