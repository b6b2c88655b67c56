"""LightningDataModule that streams activation rows from the sharded store.

Only ``shards_in_memory`` shards are held at once: an epoch's seeded weighted draws (see :mod:`sampler`) are
grouped by shard, shards are visited in a seeded order, and the drawn rows of each group are shuffled and
batched. Training batches are always full: the last (at most batch - 1) draws of an epoch are dropped.
Validation walks the ``val`` rows shard by shard.

DDP: every rank builds the same stream of global batches of ``world_size x batch_size`` rows (the one a single
process with that batch size builds) and trains on its own slice of each, rows ``[rank*batch_size,
(rank+1)*batch_size)``, so each optimizer step sees the same global batch as one process. Validation rows are
split ``rows[rank::world_size]``; the val metrics are sums that torchmetrics adds up over ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from refusal.activations.sampler import draw_rows, row_weights
from refusal.activations.store import ActivationStore
from refusal.errors import ConfigError

LABELS = ("toxic", "safe", "hard")


@dataclass
class RowIndex:
    """Where every row of the store lives and what it is."""

    shard: np.ndarray
    local: np.ndarray
    category: np.ndarray  # codes into categories
    label: np.ndarray  # codes into LABELS
    split: np.ndarray  # strings
    categories: list[str]

    @classmethod
    def build(cls, store: ActivationStore) -> "RowIndex":
        prompts = store.prompts
        categories = sorted({p["category"] for p in prompts})
        cat_code = np.array([categories.index(p["category"]) for p in prompts])
        label_code = np.array([LABELS.index(p["label"]) for p in prompts])
        split = np.array([p["split"] for p in prompts])
        shard, local, pidx = [], [], []
        for i in range(store.n_shards):
            pi = store.load_rows_meta(i)["prompt_index"].numpy()
            shard.append(np.full(len(pi), i))
            local.append(np.arange(len(pi)))
            pidx.append(pi)
        pidx = np.concatenate(pidx)
        return cls(np.concatenate(shard), np.concatenate(local), cat_code[pidx], label_code[pidx], split[pidx], categories)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _RowBatches(IterableDataset):
    """Yields ready batches (the DataLoader uses ``batch_size=None``)."""

    def __init__(self, store: ActivationStore, index: RowIndex, rows: np.ndarray, hooks: list[str], batch_size: int,
                 shards_in_memory: int, seed: int, weights: np.ndarray | None, samples_per_epoch: int | None,
                 epoch_fn: Callable[[], int]):
        self.store, self.index, self.rows, self.hooks = store, index, rows, hooks
        self.batch_size, self.shards_in_memory, self.seed = batch_size, shards_in_memory, seed
        self.weights, self.samples_per_epoch, self.epoch_fn = weights, samples_per_epoch, epoch_fn
        self.resume: dict | None = None  # {"epoch", "batches_done"} from a checkpoint: skip what was trained on

    @property
    def train(self) -> bool:
        return self.weights is not None

    def _selected(self, epoch: int) -> np.ndarray:
        if not self.train:  # evaluation: every row once, split across ranks
            rank, world = _dist_info()
            return self.rows[rank::world]
        return self.rows[draw_rows(self.weights, self.samples_per_epoch, self.seed, epoch)]  # the same on every rank

    def __len__(self) -> int:
        rank, world = _dist_info()
        if self.train:
            return self.samples_per_epoch // (self.batch_size * world)
        return -(-len(range(rank, len(self.rows), world)) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch_fn()
        skip = 0
        if self.resume is not None:
            skip = self.resume["batches_done"] if self.resume["epoch"] == epoch else 0
            self.resume = None
        for i, batch in enumerate(self._batches(epoch)):
            if i >= skip:
                yield batch

    def _batches(self, epoch: int) -> Iterator[dict]:
        train = self.train
        rank, world = _dist_info() if train else (0, 1)  # evaluation rows are already this rank's
        step = self.batch_size * world  # rows per global batch
        mine = slice(rank * self.batch_size, (rank + 1) * self.batch_size)
        sel = self._selected(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        shards = np.unique(self.index.shard[sel])
        if train:
            shards = rng.permutation(shards)
        carry: list[dict] = []
        for g in range(0, len(shards), self.shards_in_memory):
            group = shards[g : g + self.shards_in_memory]
            parts = []
            for s in group:
                rows = sel[self.index.shard[sel] == s]
                data = self.store.load_shard(int(s), [f"acts.{h}" for h in self.hooks])
                local = torch.as_tensor(self.index.local[rows])
                parts.append({"acts": {h: data[f"acts.{h}"][local].float() for h in self.hooks},
                              "category": torch.as_tensor(self.index.category[rows]),
                              "label": torch.as_tensor(self.index.label[rows])})
            block = _concat(carry + parts)
            n = len(block["category"])
            perm = torch.as_tensor(rng.permutation(n)) if train else torch.arange(n)
            full = n - n % step
            for a in range(0, full, step):
                yield _take(block, perm[a : a + step][mine])
            carry = [_take(block, perm[full:])] if full < n else []
        if carry and not train:
            yield carry[0]


class _ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (it has state_dict/load_state_dict): a run resumed mid-epoch
    continues with exactly the batches an uninterrupted run would have seen next."""

    def __init__(self, dataset: _RowBatches, progress_fn: Callable[[], dict]):
        super().__init__(dataset, batch_size=None)
        self.progress_fn = progress_fn

    def state_dict(self) -> dict:
        return self.progress_fn()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.resume = dict(state)


def _concat(parts: list[dict]) -> dict:
    return {"acts": {h: torch.cat([p["acts"][h] for p in parts]) for h in parts[0]["acts"]},
            "category": torch.cat([p["category"] for p in parts]), "label": torch.cat([p["label"] for p in parts])}


def _take(block: dict, idx: torch.Tensor) -> dict:
    return {"acts": {h: v[idx] for h, v in block["acts"].items()}, "category": block["category"][idx], "label": block["label"][idx]}


class ActivationDataModule(L.LightningDataModule):
    def __init__(self, store_dir: str, hooks: list[str] | None = None, batch_size: int = 1024,
                 samples_per_epoch: int | None = None, balance_safe_toxic: bool = True,
                 use_category_weights: bool = True, shards_in_memory: int = 4, val_batch_size: int = 4096,
                 seed: int = 0, collect_fn: Callable[[], object] | None = None):
        super().__init__()
        self.store_dir, self.hooks = store_dir, hooks
        self.batch_size, self.samples_per_epoch, self.val_batch_size = batch_size, samples_per_epoch, val_batch_size
        self.balance_safe_toxic, self.use_category_weights = balance_safe_toxic, use_category_weights
        self.shards_in_memory, self.seed, self.collect_fn = shards_in_memory, seed, collect_fn
        self.store: ActivationStore | None = None

    def prepare_data(self) -> None:
        if self.collect_fn is not None:
            self.collect_fn()

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        self.store = ActivationStore(self.store_dir)
        self.hooks = self.hooks or self.store.hooks
        missing = [h for h in self.hooks if h not in self.store.hooks]
        if missing:
            raise ConfigError(f"hooks {missing} are not in the activation store {self.store_dir}; it has {self.store.hooks}")
        self.index = RowIndex.build(self.store)
        self.train_rows, self.val_rows = self.index.rows("train"), self.index.rows("val")
        for name, rows in (("train", self.train_rows), ("val", self.val_rows)):
            if len(rows) == 0:
                raise ConfigError(f"the activation store {self.store_dir} has no rows in split {name!r}")
        self.weights = row_weights(self.index.label[self.train_rows] == 0, self.index.category[self.train_rows],
                                   self.balance_safe_toxic, self.use_category_weights)

    @property
    def categories(self) -> list[str]:
        return self.index.categories

    def _epoch(self) -> int:
        return int(self.trainer.current_epoch) if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        n = self.samples_per_epoch or len(self.train_rows)
        world = _dist_info()[1]
        if n < self.batch_size * world:
            raise ConfigError(f"activations.loader.samples_per_epoch={n} is less than one global batch "
                              f"(batch_size {self.batch_size} x {world} ranks); raise it or lower the batch size")
        ds = _RowBatches(self.store, self.index, self.train_rows, self.hooks, self.batch_size, self.shards_in_memory,
                         self.seed, self.weights, n, self._epoch)
        return _ResumableLoader(ds, self._progress)

    def _progress(self) -> dict:
        """Epoch and batches already trained on in it (read when a checkpoint is saved)."""
        loop = self.trainer.fit_loop.epoch_loop
        return {"epoch": int(self.trainer.current_epoch), "batches_done": int(loop.batch_progress.current.processed)}

    def val_dataloader(self) -> DataLoader:
        ds = _RowBatches(self.store, self.index, self.val_rows, self.hooks, self.val_batch_size, self.shards_in_memory,
                         self.seed, None, None, lambda: 0)
        return DataLoader(ds, batch_size=None)

    def sample_rows(self, n: int) -> dict[str, torch.Tensor]:
        """Up to ``n`` random train rows per hook (for SAE initialisation), seeded: the same rows on every DDP rank,
        so every rank computes the same input scale and b_dec."""
        rng = np.random.default_rng(self.seed)
        rows = np.sort(rng.choice(self.train_rows, size=min(n, len(self.train_rows)), replace=False))
        out = {h: [] for h in self.hooks}
        for s in np.unique(self.index.shard[rows]):
            data = self.store.load_shard(int(s), [f"acts.{h}" for h in self.hooks])
            local = torch.as_tensor(self.index.local[rows[self.index.shard[rows] == s]])
            for h in self.hooks:
                out[h].append(data[f"acts.{h}"][local].float())
        return {h: torch.cat(v) for h, v in out.items()}
