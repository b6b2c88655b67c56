"""Nodes of a circuit: the SAE features of every hooked point plus one error node per hooked point, at the node
positions, aggregated over positions or kept per position.

Node positions are the last ``n_positions`` tokens of every (left-padded) prompt. With ``positions:
post_instruction`` these are the chat-template tokens after the user text; the template suffix is the same for
every prompt, so position ``-k`` (k-th token from the end) means the same thing in every prompt and the last one
(-1) is the first response position. ``positions: last`` keeps only that one.

Layout of a per-prompt attribution vector: hooks in model order; inside a hook the features ``0..d_sae-1`` then
the error node; with ``aggregation: none`` each of those once per position (position fastest).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from refusal.errors import ConfigError, check_choice
from refusal.model.chat import EncodedBatch

POSITIONS = ("post_instruction", "last")
AGGREGATIONS = ("sum", "mean", "max", "none")
ERROR = "error"


def node_position_count(enc: EncodedBatch, positions: str) -> int:
    """How many trailing tokens are node positions; the same for every row, or a ConfigError."""
    check_choice("circuit.positions", positions, POSITIONS)
    if positions == "last":
        return 1
    n = {int(enc.seq_len - ce) for ce in enc.content_end}
    if len(n) != 1 or min(n) < 1:
        raise ConfigError(f"post-instruction token counts differ between prompts ({sorted(n)}); the chat template "
                          "suffix must be identical for every prompt (use circuit.positions=last)")
    return n.pop()


def aggregate(ie: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-position values [..., P, n] -> per-node values: [..., n] (sum, mean, max = the signed value at the
    position of largest magnitude) or [..., n * P] (none; position fastest)."""
    check_choice("circuit.aggregation", mode, AGGREGATIONS)
    if mode == "sum":
        return ie.sum(-2)
    if mode == "mean":
        return ie.mean(-2)
    if mode == "max":
        idx = ie.abs().argmax(-2, keepdim=True)
        return ie.gather(-2, idx).squeeze(-2)
    return ie.transpose(-1, -2).reshape(*ie.shape[:-2], -1)


@dataclass(frozen=True)
class NodeSpace:
    hooks: tuple[str, ...]
    d_sae: tuple[int, ...]
    n_positions: int
    aggregation: str

    @property
    def per_position(self) -> int:
        return self.n_positions if self.aggregation == "none" else 1

    def hook_size(self, h: int) -> int:
        return (self.d_sae[h] + 1) * self.per_position

    @cached_property
    def offsets(self) -> list[int]:
        out = [0]
        for h in range(len(self.hooks)):
            out.append(out[-1] + self.hook_size(h))
        return out

    @property
    def n_nodes(self) -> int:
        return self.offsets[-1]

    def hook_slice(self, h: int) -> slice:
        return slice(self.offsets[h], self.offsets[h + 1])

    @cached_property
    def hook_index(self) -> torch.Tensor:
        """[n_nodes] index of the hook of each node."""
        return torch.cat([torch.full((self.hook_size(h),), h, dtype=torch.long) for h in range(len(self.hooks))])

    @cached_property
    def is_error(self) -> torch.Tensor:
        """[n_nodes] True for error nodes."""
        parts = []
        for h in range(len(self.hooks)):
            m = torch.zeros(self.d_sae[h] + 1, self.per_position, dtype=torch.bool)
            m[-1] = True
            parts.append(m.reshape(-1))
        return torch.cat(parts)

    def describe(self, i: int) -> tuple[str, int | str, int | None]:
        """(hook, feature index or "error", position from the end or None) of node ``i``."""
        h = int(torch.searchsorted(torch.tensor(self.offsets), torch.tensor(i), right=True)) - 1
        local = i - self.offsets[h]
        feat, pos = divmod(local, self.per_position)
        feature = ERROR if feat == self.d_sae[h] else feat
        position = pos - self.n_positions if self.aggregation == "none" else None
        return self.hooks[h], feature, position

    def node_id(self, i: int) -> str:
        hook, feature, position = self.describe(i)
        return f"{hook}/{feature}" + ("" if position is None else f"@{position}")
