"""Sparse ÷ dense TopK SAE kernels: one training step (loss, backward, decoder-gradient projection, clipping, Adam,
decoder normalisation) with ``sae.kernel=sparse`` against ``sae.kernel=dense``, at several k / d_sae. Where the
ratio (dense step time ÷ sparse step time) crosses 1 is where ``kernel=auto`` should switch (``SPARSE_MAX_DENSITY``
in refusal/sae/config.py).

The two run interleaved in one process (a dense step, a sparse step, ...) on the same batches, after --warmup
steps each; each figure is the median step.

    .venv/bin/python bench/sae_kernels.py [--d-sae 4608] [--k 46,92,230,460] [--batch 1024] [--steps 10] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from refusal.sae.config import SPARSE_MAX_DENSITY, SAEConfig
from refusal.sae.loss import sae_loss
from refusal.sae.model import SparseAutoencoder
from refusal.sae.optim import build_optimizer
from sae_config import sae_config



def make(args, k: int, kernel: str, device):
    cfg = SAEConfig.from_cfg(sae_config(expansion_factor=None, d_sae=args.d_sae, k=k, k_percent=None, kernel=kernel),
                             args.d_in)
    torch.manual_seed(0)
    sae = SparseAutoencoder(args.d_in, args.d_sae, "topk", k=k).to(device).train()
    sae.init_from_sample(torch.randn(4096, args.d_in, device=device))
    opt, _ = build_optimizer(sae.parameters(), cfg, total_steps=1000)
    return cfg, sae, opt


def step(cfg, sae, opt, x, i: int) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    opt.zero_grad()
    sae_loss(sae, x, cfg, i).loss.backward()
    sae.remove_parallel_decoder_grad()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    sae.normalize_decoder()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", default="46,92,230,460", help="comma-separated k values")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device={device} d_in={args.d_in} d_sae={args.d_sae} batch={args.batch} steps={args.steps} "
          f"threads={torch.get_num_threads()} auto=sparse up to k/d_sae={SPARSE_MAX_DENSITY}")
    gen = torch.Generator(device="cpu").manual_seed(1)
    for k in (int(v) for v in args.k.split(",")):
        runs = {kernel: make(args, k, kernel, device) for kernel in ("dense", "sparse")}
        times = {"dense": [], "sparse": []}
        for i in range(args.warmup + args.steps):
            x = (torch.randn(args.batch, args.d_in, generator=gen) * 3 + 1).to(device)
            for kernel, (cfg, sae, opt) in runs.items():
                t = step(cfg, sae, opt, x, i)
                if i >= args.warmup:
                    times[kernel].append(t)
        dense, sparse = (1e3 * statistics.median(times[kn]) for kn in ("dense", "sparse"))
        print(f"k={k} k/d_sae={k / args.d_sae:.3f}: dense step {dense:.1f} ms, sparse step {sparse:.1f} ms, "
              f"ratio={dense / sparse:.2f}", flush=True)


if __name__ == "__main__":
    main()
