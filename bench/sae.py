"""SAE training throughput: the Lightning loop (Trainer + SAELightningModule, logging at the Trainer's default
cadence to a CSV logger) against a bare PyTorch for-loop with the same SAE, loss, optimizer, schedule and batches.
Both are timed in the same process after warm-up steps; prints one line per measurement and ``ratio=``
(Lightning samples/s ÷ bare samples/s; goal >= 0.9).

    .venv/bin/python bench/sae.py --d-in 576 --expansion 8 --batch 1024 --steps 50
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from refusal.sae.loss import sae_loss
from refusal.sae.module import SAELightningModule
from refusal.sae.optim import build_optimizer

HOOK = "blocks.12.hook_resid_post"
CONF = Path(__file__).resolve().parents[1] / "conf" / "sae"


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


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int, last: int, device: torch.device):
        self.warmup, self.last, self.device = warmup, last, device
        self.t0 = self.t1 = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.last:
            sync(self.device)
            self.t1 = time.perf_counter()


def make_module(args, total_steps: int) -> SAELightningModule:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{args.arch}.yaml"))
    cfg["expansion_factor"] = args.expansion
    L.seed_everything(0, verbose=False)
    return SAELightningModule(cfg, [HOOK], args.d_in, [f"c{i}" for i in range(10)], total_steps)


def run_lightning(args, data, device, tmp) -> float:
    total = args.warmup + args.steps
    module = make_module(args, total)
    module.init_from_sample({HOOK: data.x[:4096]})
    timer = StepTimer(args.warmup, total, device)
    trainer = L.Trainer(max_steps=total, accelerator=device.type, devices=1, logger=CSVLogger(tmp),
                        callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, loader(data, args.batch, seed=1))
    return args.steps * args.batch / (timer.t1 - timer.t0)


def run_bare(args, data, device) -> float:
    total = args.warmup + args.steps
    module = make_module(args, total)
    module.init_from_sample({HOOK: data.x[:4096]})
    sae, cfg = module.sae(HOOK).to(device).train(), module.cfg
    opt, sched = build_optimizer(sae.parameters(), cfg, total)
    t0 = None
    for step, batch in enumerate(loader(data, args.batch, seed=1)):
        if step == total:
            break
        if step == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        x = batch["acts"][HOOK].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = sae_loss(sae, x, cfg, step).loss
        loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sched.step()
        sae.normalize_decoder()
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--expansion", type=float, default=8)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--arch", choices=["topk", "batchtopk", "relu_l1"], default="topk")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    n_rows = args.batch * (args.warmup + args.steps + 1)
    data = InMemoryActs(torch.randn(n_rows, args.d_in, generator=torch.Generator().manual_seed(0)) * 3 + 1, 10)
    print(f"device={device} d_in={args.d_in} d_sae={round(args.expansion * args.d_in)} batch={args.batch} "
          f"steps={args.steps} warmup={args.warmup} arch={args.arch}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        lightning_sps = run_lightning(args, data, device, tmp)
    print(f"lightning samples/s={lightning_sps:.1f}", flush=True)
    bare_sps = run_bare(args, data, device)
    print(f"bare samples/s={bare_sps:.1f}", flush=True)
    print(f"ratio={lightning_sps / bare_sps:.3f}")


if __name__ == "__main__":
    main()
