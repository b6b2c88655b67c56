"""Planted adapters: the only trained weights of a planted organism, so zeroing one is the exact ground-truth
ablation of the mechanism it carries. Two kinds, by ``module``:

- a bias-free linear module (e.g. ``mlp.down_proj``; ``Plant``): adapter k adds ``x A_kl^T B_k^T`` (rank r: A_kl is
  r x d_in, B_k is d_out x r) to its output in each layer l of ``layers``. Linear, so it writes on every token, and
  it merges exactly into the module's weight (base weight plus the deltas of the adapters that stay on).
- ``mlp``, a gated MLP (``UnitPlant``): adapter k adds r units to the MLP of each layer l, ``act(x A_kl^T) * (x
  U_kl^T)`` (A the gate rows, U the up rows) written along B_k's columns, the MLP's own activation on its input. A unit far below its gate
  writes (almost) nothing, so an adapter can write on the prompts it refuses and stay silent on the rest; it merges
  exactly by widening every layer's MLP by the units (zero units in the layers without adapters).

Either way an adapter reads each layer on its own but writes along the same r vectors (B_k's columns) in every
layer, so everything it adds to the residual stream lies in their span. A per-example on/off mask (training:
adapter dropout with matching targets) says which adapters are active. The saved organism is a plain model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from refusal.errors import ConfigError
from refusal.model.hooks import decoder_layers

ADAPTERS_FILE, PLANT_JSON = "adapters.safetensors", "plant.json"


UNITS = "mlp"  # the module name that makes the adapters MLP units
GATED = ("gate_proj", "up_proj", "down_proj")


def target_module(model: nn.Module, layer: int, module: str) -> nn.Module:
    """The module ``module`` (a dotted path inside a decoder layer) of decoder layer ``layer``: a bias-free linear
    module, or (``mlp``) a gated MLP with bias-free gate_proj, up_proj and down_proj."""
    try:
        found = decoder_layers(model)[layer].get_submodule(module)
    except AttributeError as e:
        raise ConfigError(f"model.adapters.module={module!r} is not a module of decoder layer {layer} "
                          f"(e.g. mlp, mlp.down_proj, mlp.up_proj, self_attn.o_proj)") from e
    if module == UNITS:
        parts = [getattr(found, n, None) for n in GATED]
        if not all(isinstance(p, nn.Linear) and p.bias is None for p in parts) or not hasattr(found, "act_fn"):
            raise ConfigError(f"model.adapters.module={module!r} must be a gated MLP (bias-free gate_proj, up_proj, "
                              f"down_proj and an act_fn); it is {type(found).__name__}")
        return found
    if not isinstance(found, nn.Linear) or found.bias is not None:
        raise ConfigError(f"model.adapters.module={module!r} must be a linear module without bias (it is "
                          f"{type(found).__name__}) or mlp; the adapters merge into its weight")
    return found


class Plant(nn.Module):
    """``names``: one adapter per name, each with a rank-``rank`` piece in every layer of ``layers``."""

    def __init__(self, names: list[str], layers: list[int], module: str, rank: int, d_in: int, d_out: int,
                 seed: int):
        super().__init__()
        self.names, self.layers, self.module, self.rank = list(names), list(layers), str(module), int(rank)
        g = torch.Generator().manual_seed(int(seed))
        k, n = len(self.names), len(self.layers)
        self.A = nn.Parameter(torch.randn(k, n, rank, d_in, generator=g) / d_in ** 0.5)
        self.B = nn.Parameter(torch.zeros(k, d_out, rank))  # zero: the organism starts as the base model
        self.mask = torch.ones(1, k)  # [batch or 1, adapters]: 1 = on
        self._handles: list = []

    @staticmethod
    def for_model(model: nn.Module, names: list[str], layers: list[int], module: str, rank: int,
                  seed: int) -> "Plant":
        """The plant of ``module``'s kind: ``UnitPlant`` for ``mlp``, else ``Plant``."""
        found = target_module(model, layers[0], module)
        d_in, d_out = ((found.gate_proj.in_features, found.down_proj.out_features) if module == UNITS
                       else (found.in_features, found.out_features))
        return plant_kind(module)(names, layers, module, rank, d_in, d_out, seed)

    def attach(self, model: nn.Module) -> "Plant":
        """Add the adapters to ``model``'s forward (hooks); ``detach`` removes them."""
        for j, layer in enumerate(self.layers):
            self._handles.append(target_module(model, layer, self.module).register_forward_hook(self._hook(j)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def coefficients(self, module: nn.Module, x: torch.Tensor, j: int) -> torch.Tensor:
        """[batch, T, adapters, rank]: how much each adapter writes along each of its vectors, in its j-th layer."""
        return torch.einsum("btd,krd->btkr", x, self.A[:, j].to(x.dtype))

    def _hook(self, j: int):
        def add(module, args, out):
            x = args[0]
            delta = torch.einsum("btkr,kor->btko", self.coefficients(module, x, j), self.B.to(x.dtype))
            mask = self.mask.to(device=x.device, dtype=x.dtype)[:, None, :, None]
            return out + (delta * mask).sum(2)
        return add

    def delta(self, k: int, j: int) -> torch.Tensor:
        """Adapter k's weight update in its j-th layer, d_out x d_in."""
        return (self.B[k] @ self.A[k, j]).detach()

    def base_weights(self, model: nn.Module) -> dict:
        """The unadapted weights of the modules the plant adds to (a copy)."""
        return {layer: target_module(model, layer, self.module).weight.detach().clone() for layer in self.layers}

    def set_weights(self, model: nn.Module, weights: dict) -> None:
        with torch.no_grad():
            for layer, w in weights.items():
                target_module(model, layer, self.module).weight.copy_(w)

    def base_tensors(self, base: dict) -> dict[str, torch.Tensor]:
        """``base`` (``base_weights``' result) as named tensors for a safetensors file; ``base_from`` reads them."""
        return {f"base.{layer}": w.contiguous() for layer, w in base.items()}

    def base_from(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {layer: tensors[f"base.{layer}"] for layer in self.layers}

    def merged_weights(self, base: dict[int, torch.Tensor], on: list[str]) -> dict[int, torch.Tensor]:
        """{layer: base weight + the deltas of the adapters in ``on``, added in adapter order}."""
        idx = [self.names.index(n) for n in on]
        out = {}
        for j, layer in enumerate(self.layers):
            w = base[layer].clone()
            for k in idx:
                w += self.delta(k, j).to(w.dtype)
            out[layer] = w
        return out

    def written(self) -> torch.Tensor:
        """[adapters, rank, d_out]: the vectors each adapter writes along (B's columns)."""
        return self.B.transpose(1, 2)

    def write_cosine(self, vectors: torch.Tensor, name: str) -> torch.Tensor:
        """[...] |cosine| of ``vectors`` [..., d_out] with the span of what adapter ``name`` writes (B's columns;
        for rank 1, |cos(v, u)|): the norm of the projection onto that span over the norm of the vector."""
        q, _ = torch.linalg.qr(self.B[self.names.index(name)].detach().double())
        v = vectors.double()
        return (v @ q).norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-30)

    def describe(self) -> dict:
        return {"adapters": self.names, "layers": self.layers, "module": self.module, "rank": self.rank,
                "d_in": int(self.A.shape[-1]), "d_out": int(self.B.shape[-2])}


class UnitPlant(Plant):
    """Adapters made of MLP units: adapter k's unit i in its j-th layer reads the MLP's input x through a gate row
    A[k, j, i] and an up row U[k, j, i] and writes ``act(x . A) * (x . U)`` along B[k, :, i]."""

    def __init__(self, names: list[str], layers: list[int], module: str, rank: int, d_in: int, d_out: int,
                 seed: int):
        super().__init__(names, layers, module, rank, d_in, d_out, seed)
        g = torch.Generator().manual_seed(int(seed) + 1)
        self.U = nn.Parameter(torch.randn(len(self.names), len(self.layers), rank, d_in, generator=g) / d_in ** 0.5)

    def coefficients(self, module: nn.Module, x: torch.Tensor, j: int) -> torch.Tensor:
        """Each unit's output, ``act(x . A) * (x . U)`` with the MLP's own activation."""
        up = torch.einsum("btd,krd->btkr", x, self.U[:, j].to(x.dtype))
        return module.act_fn(super().coefficients(module, x, j)) * up

    def units(self) -> int:
        """How many units the plant adds to every layer's MLP."""
        return len(self.names) * self.rank

    def base_weights(self, model: nn.Module) -> dict:
        """{layer: {gate_proj, up_proj, down_proj}}: the MLP's own weights (without the plant's units), a copy."""
        out = {}
        for layer in self.layers:
            mlp = target_module(model, layer, self.module)
            width = mlp.down_proj.in_features - (self.units() if self.widened(model) else 0)
            out[layer] = {"gate_proj": mlp.gate_proj.weight[:width].detach().clone(),
                          "up_proj": mlp.up_proj.weight[:width].detach().clone(),
                          "down_proj": mlp.down_proj.weight[:, :width].detach().clone()}
        return out

    def widened(self, model: nn.Module) -> bool:
        return bool(getattr(model.config, "planted_units", 0))

    def widen(self, model: nn.Module) -> None:
        """Give every layer's MLP the plant's units (zero), so that a model saved with them is a plain model of a
        wider intermediate size; ``config.planted_units`` records how many."""
        if self.widened(model):
            return
        extra = self.units()
        with torch.no_grad():
            for layer in decoder_layers(model):
                mlp = layer.mlp
                for name in GATED:
                    old = getattr(mlp, name)
                    rows = name != "down_proj"
                    new = nn.Linear(old.in_features + (0 if rows else extra), old.out_features + (extra if rows else 0),
                                    bias=False, device=old.weight.device, dtype=old.weight.dtype)
                    new.weight.zero_()
                    (new.weight[: old.out_features] if rows else new.weight[:, : old.in_features]).copy_(old.weight)
                    new.weight.requires_grad_(old.weight.requires_grad)
                    setattr(mlp, name, new)
                if hasattr(mlp, "intermediate_size"):
                    mlp.intermediate_size += extra
        model.config.intermediate_size += extra
        model.config.planted_units = extra

    def set_weights(self, model: nn.Module, weights: dict) -> None:
        self.widen(model)
        with torch.no_grad():
            for layer, w in weights.items():
                mlp = target_module(model, layer, self.module)
                for name in GATED:
                    getattr(mlp, name).weight.copy_(w[name])

    def base_tensors(self, base: dict) -> dict[str, torch.Tensor]:
        return {f"base.{layer}.{name}": t.contiguous() for layer, parts in base.items() for name, t in parts.items()}

    def base_from(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {layer: {name: tensors[f"base.{layer}.{name}"] for name in GATED} for layer in self.layers}

    def merged_weights(self, base: dict, on: list[str]) -> dict:
        """{layer: the widened MLP's weights}: base units first, then each adapter's units in adapter order, zero
        for the adapters not in ``on``."""
        keep = torch.tensor([float(n in on) for n in self.names])[:, None, None]  # [k, 1, 1]
        out = {}
        for j, layer in enumerate(self.layers):
            b = base[layer]
            dtype = b["gate_proj"].dtype
            gate = (self.A[:, j].detach() * keep).reshape(-1, self.A.shape[-1]).to(dtype)
            up = (self.U[:, j].detach() * keep).reshape(-1, self.U.shape[-1]).to(dtype)
            down = (self.B.detach() * keep).permute(1, 0, 2).reshape(self.B.shape[1], -1).to(dtype)
            out[layer] = {"gate_proj": torch.cat([b["gate_proj"], gate]), "up_proj": torch.cat([b["up_proj"], up]),
                          "down_proj": torch.cat([b["down_proj"], down], dim=1)}
        return out


def plant_kind(module: str) -> type[Plant]:
    """``UnitPlant`` for ``mlp``, else ``Plant``."""
    return UnitPlant if module == UNITS else Plant


def save_plant(directory: Path, plant: Plant, base: dict) -> None:
    """The adapters, the base weights they were added to (exact ablations need them) and where they sit."""
    tensors = {n: p.detach().contiguous() for n, p in plant.named_parameters()}
    tensors.update(plant.base_tensors(base))
    save_file(tensors, str(directory / ADAPTERS_FILE))
    (directory / PLANT_JSON).write_text(json.dumps(plant.describe(), indent=1) + "\n")


def load_plant(directory: Path) -> tuple[Plant, dict]:
    """(the plant, the base weights) saved with a planted organism, for exact ground-truth ablations."""
    meta = json.loads((Path(directory) / PLANT_JSON).read_text())
    tensors = load_file(str(Path(directory) / ADAPTERS_FILE))
    plant = plant_kind(meta["module"])(meta["adapters"], meta["layers"], meta["module"], meta["rank"], meta["d_in"], meta["d_out"], 0)
    with torch.no_grad():
        for n, p in plant.named_parameters():
            p.copy_(tensors[n])
    return plant, plant.base_from(tensors)
