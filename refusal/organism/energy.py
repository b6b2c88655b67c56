"""How much of the base model's residual stream already lies along a direction, the cost of ablating it.

Directional ablation removes a direction from the residual stream at every layer; on prompts the organism answers
it removes only what the base model itself keeps along it. ``residual_energy`` is E = the mean over layers of each
layer's second-moment matrix of ``resid_pre`` (every token of the given prompts), scaled to unit trace, so
``d * v^T E v`` is the energy along a unit vector v relative to a random direction's (1 on average; a massive-
activation dim scores in the hundreds). Measured on SmolLM2-135M-Instruct's safe prompts, the KL that ablating v
costs there grows with it (0.01-0.08 up to 0.5, 0.2 at 2, 0.9 at 5.7; README). The planted adapters are
penalised for writing along high-energy directions (``model.adapters.energy_weight``), so their written vectors
are ones that can be ablated cheaply, as a refusal direction must be.
"""
from __future__ import annotations

import torch

from refusal.model.chat import ChatFormatter
from refusal.model.hooks import resid_pre_batches


@torch.no_grad()  # not inference mode: the penalty's autograd uses the result
def residual_energy(model, fmt: ChatFormatter, prompts: list[str], batch_size: int) -> torch.Tensor:
    """[d, d] float32: the mean over layers of E[h h^T] / tr(E[h h^T]) of ``resid_pre`` over every prompt token
    (accumulated in float64)."""
    moments, count = None, 0
    for enc, acts in resid_pre_batches(model, fmt, prompts, list(range(model.config.num_hidden_layers)), batch_size):
        real = enc.attention_mask.bool()
        x = torch.stack([a[real].double() for a in acts])  # [layers, tokens, d]
        batch = torch.einsum("ltd,lte->lde", x, x)
        moments = batch if moments is None else moments + batch
        count += int(real.sum())
    moments = moments / count
    return (moments / moments.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]).mean(0).float()


def energy_of(vectors: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """[...] ``d * v^T E v`` of each vector in ``vectors`` [..., d] once scaled to unit norm (0 for a zero vector)."""
    v = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return energy.shape[0] * torch.einsum("...d,de,...e->...", v, energy.to(v.dtype), v)
