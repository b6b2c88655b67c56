"""Memory while streaming: peak RSS of a fresh process that streams every train row of an activation store once
through ActivationDataModule (plus one validation pass), for a store of S shards and one of 10 x S shards of the
same size. Only ``shards_in_memory`` shards are held at once, so 10x the rows should cost about the same memory.
Goal: peak RSS (10x) ÷ peak RSS (1x) <= 1.2. Also prints each run's growth over its RSS before streaming.

    .venv/bin/python bench/stream_memory.py --d-in 576 --shards 8 --shard-rows 4096
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HOOK = "blocks.12.hook_resid_post"


def stream(store_dir: str, batch: int, shards_in_memory: int) -> dict:
    """Runs in the fresh process: stream the store, report rows and ru_maxrss (kB) before and after."""
    import torch

    from refusal.activations.datamodule import ActivationDataModule

    dm = ActivationDataModule(store_dir, [HOOK], batch_size=batch, samples_per_epoch=None,
                              shards_in_memory=shards_in_memory, val_batch_size=4 * batch, seed=0)
    dm.setup("fit")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows, total = 0, torch.zeros(())
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for b in loader:
            x = b["acts"][HOOK]
            rows += len(x)
            total += x[:, 0].sum()  # touch the batch
    return {"rows": rows, "maxrss_kb_before": before, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def measure(store_dir: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(store_dir), "--batch", str(args.batch),
           "--shards-in-memory", str(args.shards_in_memory)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--shards", type=int, default=8, help="shards of the 1x store (the 10x store has 10 x this)")
    p.add_argument("--shard-rows", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--shards-in-memory", type=int, default=4)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(stream(args.child, args.batch, args.shards_in_memory)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic_store import write_synthetic_store

    mb = args.shard_rows * args.d_in * 4 / 2**20
    print(f"d_in={args.d_in} shard={args.shard_rows} rows ({mb:.1f} MiB) shards_in_memory={args.shards_in_memory} "
          f"batch={args.batch}", flush=True)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):
            store = write_synthetic_store(Path(tmp) / f"x{scale}", HOOK, args.d_in, scale * args.shards,
                                          args.shard_rows, seed=scale)
            r = measure(store, args)
            peaks[scale] = r["maxrss_kb"]
            print(f"{scale}x: {scale * args.shards} shards, {r['rows']} rows streamed: peak RSS "
                  f"{r['maxrss_kb'] / 1024:.0f} MiB (+{(r['maxrss_kb'] - r['maxrss_kb_before']) / 1024:.0f} MiB "
                  "while streaming)", flush=True)
            for f in store.iterdir():  # free the disk before writing the next store
                f.unlink()
    print(f"ratio={peaks[10] / peaks[1]:.3f}")


if __name__ == "__main__":
    main()
