"""Reductions over DDP ranks for the SAE statistics that depend on the whole global batch (identity when not
distributed), so a DDP run computes the same dead-latent counters, AuxK normaliser and batchtopk threshold as
one process on the concatenated batch. Every rank must call them in the same order (they are collectives)."""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _reduce(t: Tensor, op) -> Tensor:
    """Element-wise ``op`` of ``t`` over ranks (a new tensor; ``t`` itself when not distributed)."""
    if world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=op)
    return out


def sum_over_ranks(t: Tensor) -> Tensor:
    return _reduce(t, dist.ReduceOp.SUM)


def min_over_ranks(t: Tensor) -> Tensor:
    return _reduce(t, dist.ReduceOp.MIN)


__all__ = ["min_over_ranks", "sum_over_ranks", "world_size"]
