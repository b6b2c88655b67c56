"""The activation statistics of the feature dashboards (:mod:`refusal.circuit.dashboards`): one pass over stored
activations, SAE-encoded in chunks, keeping only the circuits' features.

Rows come in batches ``(acts {hook: [rows, d]}, prompt_index [rows], position [rows])``: from the train run's
activation store (:func:`store_batches`, no model forward), or, where there is no usable store (SAEs given as
``sae_dirs``, a store deleted or built for other prompts/weights), from capture-only forwards of the prompts
(:func:`forward_batches`, stopped after the deepest hook). Per feature and per (category, label) of the prompts it
keeps the token count, the count of tokens with activation > 0 and the activation sum; per feature and prompt the
largest activation and the (first) token position holding it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from refusal.activations.store import ROW_KEYS, ActivationStore
from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter
from refusal.model.hooks import capture_activations, parse_hook_name, run_until_stop

CHUNK_ROWS = 4096  # rows encoded at once (the [rows, d_sae] pre-activations are the largest tensor)


@dataclass(frozen=True)
class DashboardSettings:
    """``circuit.dashboards``: whether to write them, top-activating prompts per feature, promoted/suppressed tokens."""
    enabled: bool
    top_examples: int
    top_tokens: int


Batch = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]


def usable_store(store_dir, weights_hash: str, prompts_hash: str,
                 hooks: list[str]) -> tuple[ActivationStore | None, str]:
    """(the store at ``store_dir`` when it holds ``hooks`` for these model weights and prompts, else None; why not)."""
    if not store_dir:
        return None, "no activation store (the SAEs were not trained by a train run of this pipeline)"
    try:
        store = ActivationStore(store_dir)
    except ConfigError as e:
        return None, str(e)
    fp = store.manifest.get("fingerprint", {})
    if fp.get("weights_hash") != weights_hash or fp.get("prompts_hash") != prompts_hash:
        return None, f"the activation store {store_dir} was built for other model weights or prompts"
    missing = sorted(set(hooks) - set(store.hooks))
    if missing:
        return None, f"the activation store {store_dir} lacks hooks {missing}"
    return store, ""


def store_batches(store: ActivationStore, hooks: list[str]) -> Iterator[Batch]:
    """One batch per shard of ``store`` (a shard holds a contiguous range of whole prompts)."""
    for i in range(store.n_shards):
        t = store.load_shard(i, [f"acts.{h}" for h in hooks] + list(ROW_KEYS))
        yield {h: t[f"acts.{h}"] for h in hooks}, t["prompt_index"].long(), t["position"].long()


@torch.inference_mode()
def forward_batches(model, formatter: ChatFormatter, texts: list[str], hooks: list[str], n_layers: int,
                    batch_size: int) -> Iterator[Batch]:
    """Activations at every token from the user text on (the store's ``all`` positions) of ``texts``, by forwards
    that stop after the deepest hook; prompt_index indexes ``texts``."""
    deepest = max(parse_hook_name(h, n_layers).layer for h in hooks)
    device = next(model.parameters()).device
    for s in range(0, len(texts), batch_size):
        enc = formatter.encode(texts[s: s + batch_size])
        idx = enc.positions("all")
        b_idx = torch.repeat_interleave(torch.arange(len(idx)), torch.tensor([len(i) for i in idx]))
        t_idx = torch.cat(idx)
        pad = enc.seq_len - enc.n_tokens
        with capture_activations(model, hooks, stop_early=deepest < n_layers - 1) as cache:
            run_until_stop(lambda: model(**enc.to(device).model_inputs(), use_cache=False))
        acts = {h: cache[h][b_idx.to(cache[h].device), t_idx.to(cache[h].device)].float().cpu() for h in hooks}
        yield acts, b_idx + s, t_idx - pad[b_idx]


class FeatureStats:
    """Accumulators for the features ``features[hook]`` over prompts whose (category, label) group is
    ``group_of[prompt index]`` (``n_groups`` groups)."""

    def __init__(self, features: dict[str, list[int]], group_of: list[int], n_groups: int):
        self.features, n_prompts = features, len(group_of)
        self.group_of = torch.tensor(group_of, dtype=torch.long)
        self.n_tokens = torch.zeros(n_groups, dtype=torch.float64)
        self.active = {h: torch.zeros(n_groups, len(f), dtype=torch.float64) for h, f in features.items()}
        self.total = {h: torch.zeros(n_groups, len(f), dtype=torch.float64) for h, f in features.items()}
        self.best = {h: torch.full((n_prompts, len(f)), float("-inf")) for h, f in features.items()}
        self.best_pos = {h: torch.full((n_prompts, len(f)), -1, dtype=torch.long) for h, f in features.items()}

    def add(self, saes: dict, batches: Iterable[Batch]) -> "FeatureStats":
        for acts, prompt_index, position in batches:
            g = self.group_of[prompt_index]
            self.n_tokens.index_add_(0, g, torch.ones(len(g), dtype=torch.float64))
            for hook, feats in self.features.items():
                f = encode_features(saes[hook].sae, acts[hook], feats)
                self.active[hook].index_add_(0, g, (f > 0).double())
                self.total[hook].index_add_(0, g, f.double())
                self._update_best(hook, f, prompt_index, position)
        return self

    def _update_best(self, hook: str, f: torch.Tensor, prompt_index: torch.Tensor, position: torch.Tensor) -> None:
        """Per prompt of the batch and feature: its largest activation and the first position (lowest row) holding
        it; kept where larger than an earlier batch's for the same prompt."""
        uniq, inv = torch.unique(prompt_index, return_inverse=True)
        index = inv[:, None].expand_as(f)
        top = torch.full((len(uniq), f.shape[1]), float("-inf")).scatter_reduce(0, index, f, "amax")
        rows = torch.arange(len(f))[:, None].expand_as(f)
        rows = torch.where(f == top[inv], rows, len(f))
        first = torch.full((len(uniq), f.shape[1]), len(f)).scatter_reduce(0, index, rows, "amin")
        pos = position[first.clamp(max=len(f) - 1)]
        better = top > self.best[hook][uniq]
        self.best[hook][uniq] = torch.where(better, top, self.best[hook][uniq])
        self.best_pos[hook][uniq] = torch.where(better, pos, self.best_pos[hook][uniq])

    def top_prompts(self, hook: str, j: int, n: int) -> list[tuple[int, float, int]]:
        """(prompt index, max activation, its position) of the ``n`` prompts where feature ``j`` of ``hook`` peaks
        highest (activation > 0 only; ties by prompt index)."""
        vals = self.best[hook][:, j]
        order = torch.sort(-vals, stable=True).indices[:n]
        return [(int(p), float(vals[p]), int(self.best_pos[hook][p, j])) for p in order.tolist() if vals[p] > 0]


@torch.no_grad()
def encode_features(sae, x: torch.Tensor, feats: list[int]) -> torch.Tensor:
    """SAE activations [rows, len(feats)] (float32, CPU) of raw activations ``x``, encoded CHUNK_ROWS at a time
    (the whole code is needed: TopK keeps a row's k largest over all latents)."""
    device, cols = sae.W_enc.device, torch.tensor(feats, dtype=torch.long)
    parts = [sae.encode(x[s: s + CHUNK_ROWS].to(device))[:, cols.to(device)].float().cpu()
             for s in range(0, len(x), CHUNK_ROWS)]
    return torch.cat(parts) if parts else torch.zeros(0, len(feats))
