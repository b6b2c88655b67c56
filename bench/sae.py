"""SAE training throughput: the Lightning loop (Trainer + SAELightningModule, logging at the Trainer's default
cadence to a CSV logger) against a bare PyTorch for-loop with the same SAE config and init, loss, optimizer,
schedule and batches. Goal: Lightning samples/s ÷ bare samples/s >= 0.9.

The two loops run in lockstep in one process: after each Lightning step a callback advances the bare loop by one
step. Each Lightning step is timed from the end of the previous bare step to the end of its own batch (so it
includes everything the Trainer does between batches: logging, data fetching, hooks), each bare step on its own;
the device is synchronised at every boundary. Other load on a shared machine therefore hits both loops alike.
Prints one line per loop and ``ratio=``.

    .venv/bin/python bench/sae.py --d-in 576 --expansion 8 --batch 1024 --steps 50
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from refusal.sae.loss import sae_loss
from refusal.sae.module import SAELightningModule
from refusal.sae.optim import build_optimizer
from sae_config import sae_config

HOOK = "blocks.12.hook_resid_post"


class InMemoryActs:
    """Indexed by a list of row indices -> one dict batch (no per-row collation)."""

    def __init__(self, x: torch.Tensor, n_categories: int):
        self.x = x
        self.category = torch.arange(len(x)) % n_categories
        self.label = torch.arange(len(x)) % 3

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx)
        return {"acts": {HOOK: self.x[idx]}, "category": self.category[idx], "label": self.label[idx]}


def loader(data: InMemoryActs, batch: int, seed: int) -> DataLoader:
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    return DataLoader(data, sampler=BatchSampler(sampler, batch, drop_last=True), batch_size=None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_module(args, total_steps: int, data: InMemoryActs) -> SAELightningModule:
    cfg = sae_config(args.arch, expansion_factor=args.expansion)
    L.seed_everything(0, verbose=False)
    module = SAELightningModule(cfg, [HOOK], args.d_in, [f"c{i}" for i in range(10)], total_steps)
    module.init_from_sample({HOOK: data.x[:4096]})
    return module


def bare_loop(args, data: InMemoryActs, device: torch.device, total: int) -> Iterator[float]:
    """The plain PyTorch loop; yields the wall time of each step."""
    module = make_module(args, total, data)
    sae, cfg = module.sae(HOOK).to(device).train(), module.cfg
    opt, sched = build_optimizer(sae.parameters(), cfg, total)
    batches = iter(loader(data, args.batch, seed=1))
    for step in range(total):
        t0 = time.perf_counter()
        batch = next(batches)
        x = batch["acts"][HOOK].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = sae_loss(sae, x, cfg, step).loss
        loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sched.step()
        sae.normalize_decoder()
        sync(device)
        yield time.perf_counter() - t0


class Lockstep(L.Callback):
    """After each Lightning step, run one bare step; time both (from step ``warmup`` on)."""

    def __init__(self, bare: Iterator[float], warmup: int, device: torch.device):
        self.bare, self.warmup, self.device = bare, warmup, device
        self.lightning_times: list[float] = []
        self.bare_times: list[float] = []
        self.resumed_at: float | None = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sync(self.device)
        now = time.perf_counter()
        if self.resumed_at is not None:
            self.lightning_times.append(now - self.resumed_at)
        with torch.enable_grad():
            bare_time = next(self.bare)
        if trainer.global_step > self.warmup:
            self.bare_times.append(bare_time)
        if trainer.global_step >= self.warmup:
            self.resumed_at = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--expansion", type=float, default=8)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200, help="timed steps of each loop (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--arch", choices=["topk", "batchtopk", "relu_l1"], default="topk")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(val_dataloader|logging interval|LeafSpec).*")
    device = torch.device(args.device)
    total = args.warmup + args.steps
    data = InMemoryActs(torch.randn(args.batch * (total + 1), args.d_in, generator=torch.Generator().manual_seed(0))
                        * 3 + 1, 10)
    print(f"device={device} d_in={args.d_in} d_sae={round(args.expansion * args.d_in)} batch={args.batch} "
          f"steps={args.steps} warmup={args.warmup} arch={args.arch} threads={torch.get_num_threads()}", flush=True)

    lockstep = Lockstep(bare_loop(args, data, device, total), args.warmup, device)
    module = make_module(args, total, data)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_steps=total, accelerator=device.type, devices=1, logger=CSVLogger(tmp),
                            callbacks=[lockstep], enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(module, loader(data, args.batch, seed=1))
    lit, bare = lockstep.lightning_times, lockstep.bare_times
    assert len(lit) == len(bare) == args.steps, (len(lit), len(bare))
    lit_sps, bare_sps = args.steps * args.batch / sum(lit), args.steps * args.batch / sum(bare)
    print(f"lightning samples/s={lit_sps:.1f} (step {1e3 * sum(lit) / len(lit):.2f} ms)", flush=True)
    print(f"bare samples/s={bare_sps:.1f} (step {1e3 * sum(bare) / len(bare):.2f} ms)", flush=True)
    print(f"ratio={lit_sps / bare_sps:.3f}")


if __name__ == "__main__":
    main()
