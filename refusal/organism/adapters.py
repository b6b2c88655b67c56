"""Planted low-rank adapters: the only trained weights of a planted organism, so zeroing one is the exact
ground-truth ablation of the mechanism it carries.

Adapter k adds ``x A_kl^T B_k^T`` (rank r: A_kl is r x d_in, B_k is d_out x r) to the output of one linear module
(``module``, e.g. ``mlp.down_proj``) in each layer l of ``layers``: it reads each layer on its own but writes along
the same r vectors (B_k's columns) in every layer, so everything it adds to the residual stream lies in their span. A
per-example on/off mask (training: adapter dropout with matching targets) says which adapters are active. Because
the module is linear, the trained adapters merge exactly into its weight: the saved organism is a plain model, and
each ablation is the base weight plus the deltas of the adapters that stay on.
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


def target_module(model: nn.Module, layer: int, module: str) -> nn.Linear:
    """The linear module ``module`` (a dotted path inside a decoder layer) of decoder layer ``layer``."""
    try:
        found = decoder_layers(model)[layer].get_submodule(module)
    except AttributeError as e:
        raise ConfigError(f"model.adapters.module={module!r} is not a module of decoder layer {layer} "
                          f"(e.g. mlp.down_proj, mlp.up_proj, self_attn.o_proj)") from e
    if not isinstance(found, nn.Linear) or found.bias is not None:
        raise ConfigError(f"model.adapters.module={module!r} must be a linear module without bias (it is "
                          f"{type(found).__name__}); the adapters merge into its weight")
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

    @classmethod
    def for_model(cls, model: nn.Module, names: list[str], layers: list[int], module: str, rank: int,
                  seed: int) -> "Plant":
        lin = target_module(model, layers[0], module)
        return cls(names, layers, module, rank, lin.in_features, lin.out_features, seed)

    def attach(self, model: nn.Module) -> "Plant":
        """Add the adapters to ``model``'s forward (hooks); ``detach`` removes them."""
        for j, layer in enumerate(self.layers):
            self._handles.append(target_module(model, layer, self.module).register_forward_hook(self._hook(j)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, j: int):
        def add(_module, args, out):
            x = args[0]
            low = torch.einsum("btd,krd->btkr", x, self.A[:, j].to(x.dtype))
            delta = torch.einsum("btkr,kor->btko", low, self.B.to(x.dtype))
            mask = self.mask.to(device=x.device, dtype=x.dtype)[:, None, :, None]
            return out + (delta * mask).sum(2)
        return add

    def delta(self, k: int, j: int) -> torch.Tensor:
        """Adapter k's weight update in its j-th layer, d_out x d_in."""
        return (self.B[k] @ self.A[k, j]).detach()

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


def base_weights(model: nn.Module, plant: Plant) -> dict[int, torch.Tensor]:
    """The unadapted weights of the modules the plant adds to (a copy)."""
    return {layer: target_module(model, layer, plant.module).weight.detach().clone() for layer in plant.layers}


def set_weights(model: nn.Module, plant: Plant, weights: dict[int, torch.Tensor]) -> None:
    with torch.no_grad():
        for layer, w in weights.items():
            target_module(model, layer, plant.module).weight.copy_(w)


def save_plant(directory: Path, plant: Plant, base: dict[int, torch.Tensor]) -> None:
    """The adapters, the base weights they were added to (exact ablations need them) and where they sit."""
    tensors = {"A": plant.A.detach().contiguous(), "B": plant.B.detach().contiguous()}
    tensors.update({f"base.{layer}": w.contiguous() for layer, w in base.items()})
    save_file(tensors, str(directory / ADAPTERS_FILE))
    (directory / PLANT_JSON).write_text(json.dumps(plant.describe(), indent=1) + "\n")


def load_plant(directory: Path) -> tuple[Plant, dict[int, torch.Tensor]]:
    """(the plant, the base weights) saved with a planted organism, for exact ground-truth ablations."""
    meta = json.loads((Path(directory) / PLANT_JSON).read_text())
    tensors = load_file(str(Path(directory) / ADAPTERS_FILE))
    plant = Plant(meta["adapters"], meta["layers"], meta["module"], meta["rank"], meta["d_in"], meta["d_out"], 0)
    with torch.no_grad():
        plant.A.copy_(tensors["A"])
        plant.B.copy_(tensors["B"])
    return plant, {layer: tensors[f"base.{layer}"] for layer in plant.layers}
