"""Speed race against SAELens: this project's training loop (Lightning Trainer + SAELightningModule, batches from
ActivationDataModule) against SAELens's ``SAETrainer`` with its ``TopKTrainingSAE``. Same TopK SAE (d_in, d_sae,
k), batch, steps, dtype and device, the same batches (each side reads its own ActivationDataModule over one
activation store of synthetic activations in this project's format, same seed), Adam at the same lr, gradient
norm clipped to 1, AuxK with the same coefficient and dead window, no validation. Goals (fp32, CPU, 2 threads, k 46, batch
1024): ours ÷ SAELens >= 1.5 at d_sae 4608 and >= 2.0 at d_sae 32768 (`--d-sae 32768`; our side picks the sparse
kernels there, `--kernel` forces one).

Lockstep: the two loops run in one process, in two threads that strictly take turns, one training iteration each
(never at the same time), so load from other jobs on a shared machine hits both alike. A side's iteration is timed
from getting the turn to handing it back (data fetching, step and loop overhead; the device is synchronised at
each hand-over); the first ``--warmup`` iterations of each are not counted.

Needs sae-lens (``pip install -e '.[bench]'``); without it the script says so in one line and exits 0.

    .venv/bin/python bench/sae_vs_saelens.py --d-in 576 --expansion 8 --k 46 --batch 1024 --steps 40
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import threading
import time
import warnings
from importlib.metadata import version
from pathlib import Path

HOOK = "blocks.12.hook_resid_post"


class Turns:
    """Two loops in two threads take strict turns; each records how long it held the turn."""

    def __init__(self, first: str, device):
        self.cond = threading.Condition()
        self.owner, self.device = first, device
        self.times: dict[str, list[float]] = {"ours": [], "saelens": []}
        self.since: dict[str, float | None] = {"ours": None, "saelens": None}
        self.error: BaseException | None = None

    def wait(self, me: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.owner == me or self.error is not None)
        self.since[me] = time.perf_counter()

    def hand_over(self, me: str, wait: bool = True) -> None:
        sync(self.device)
        if self.since[me] is not None:
            self.times[me].append(time.perf_counter() - self.since[me])
        with self.cond:
            self.owner = "saelens" if me == "ours" else "ours"
            self.cond.notify_all()
        if wait:
            self.wait(me)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def make_datamodule(store_dir: Path, args):
    from refusal.activations.datamodule import ActivationDataModule

    dm = ActivationDataModule(str(store_dir), [HOOK], batch_size=args.batch, samples_per_epoch=args.batch * 64,
                              shards_in_memory=2, seed=1)
    dm.setup("fit")
    return dm


def our_trainer(args, device, turns: Turns):
    import lightning as L

    class TakeTurns(L.Callback):
        def on_train_start(self, trainer, module):
            turns.since["ours"] = time.perf_counter()

        def on_train_batch_end(self, trainer, *rest):
            turns.hand_over("ours")

    precision = "bf16-mixed" if args.autocast else "32-true"
    return L.Trainer(max_steps=args.warmup + args.steps + 1, accelerator=device.type, devices=1, precision=precision,
                     gradient_clip_val=1.0, logger=L.pytorch.loggers.CSVLogger(args.tmp), callbacks=[TakeTurns()],
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_val_batches=0)


def our_module(args, dm, total_steps: int):
    from refusal.sae.module import SAELightningModule
    from sae_config import sae_config

    cfg = sae_config(expansion_factor=None, d_sae=args.d_sae, k_percent=None, k=args.k, lr=args.lr, lr_decay="none",
                     dead_tokens_threshold=args.dead_window * args.batch, kernel=args.kernel)
    module = SAELightningModule(cfg, [HOOK], args.d_in, dm.categories, total_steps=total_steps)
    module.init_from_sample(dm.sample_rows(4096))
    return module


def saelens_trainer(args, device, dm, turns: Turns):
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    def batches():
        turns.since["saelens"] = None  # fit()'s set-up before the first batch is not an iteration
        while True:
            for batch in dm.train_dataloader():
                turns.hand_over("saelens")
                yield batch["acts"][HOOK]

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, dtype="float32",
                                                device=str(device), normalize_activations="none",
                                                aux_loss_coefficient=1 / 32))
    total = args.warmup + args.steps + 1
    cfg = SAETrainerConfig(total_training_samples=total * args.batch, train_batch_size_samples=args.batch, lr=args.lr,
                           lr_end=args.lr / 10, lr_warm_up_steps=50, device=str(device), autocast=args.autocast,
                           dead_feature_window=args.dead_window)
    return SAETrainer(cfg=cfg, sae=sae, data_provider=batches())


def run_saelens(trainer, turns: Turns) -> None:
    try:
        turns.wait("saelens")
        trainer.fit()
    except BaseException as e:  # surface it in the main thread
        turns.error = e
    finally:
        with turns.cond:
            turns.owner = "ours"
            turns.cond.notify_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--d-sae", type=int, default=None, help="default: expansion x d_in")
    p.add_argument("--k", type=int, default=46)
    p.add_argument("--kernel", default="auto", choices=("auto", "dense", "sparse"), help="our side's sae.kernel")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=40, help="timed iterations of each loop (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--dead-window", type=int, default=100, help="steps without firing before a latent is dead")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast on both sides (weights stay fp32)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = p.parse_args()
    if importlib.util.find_spec("sae_lens") is None:
        print("sae-lens is not installed (pip install -e '.[bench]'): speed race against SAELens skipped")
        return
    import torch

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "sae_lens"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(val_dataloader|logging interval|LeafSpec|IterableDataset).*")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.d_sae = args.d_sae or args.expansion * args.d_in
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        sys.path.insert(0, str(Path(__file__).parent))
        from synthetic_store import write_synthetic_store

        store = write_synthetic_store(Path(tmp) / "store", HOOK, args.d_in, n_shards=4, shard_rows=16 * args.batch)
        turns = Turns("ours", device)
        dm_ours, dm_theirs = make_datamodule(store, args), make_datamodule(store, args)
        theirs = saelens_trainer(args, device, dm_theirs, turns)
        module = our_module(args, dm_ours, args.warmup + args.steps + 1)
        print(f"device={device} d_in={args.d_in} d_sae={args.d_sae} k={args.k} batch={args.batch} steps={args.steps} "
              f"warmup={args.warmup} kernel={module.cfg.kernel} dtype={'bf16-autocast' if args.autocast else 'float32'} "
              f"threads={torch.get_num_threads()} sae-lens={version('sae-lens')}", flush=True)
        thread = threading.Thread(target=run_saelens, args=(theirs, turns), daemon=True)
        thread.start()
        our_trainer(args, device, turns).fit(module, datamodule=dm_ours)
        while thread.is_alive() and turns.error is None:  # SAELens is one iteration behind: let it finish
            turns.hand_over("ours")
        thread.join()
    if turns.error is not None:
        raise turns.error
    n = args.steps * args.batch
    sps = {side: n / sum(t[args.warmup : args.warmup + args.steps]) for side, t in turns.times.items()}
    for side in ("ours", "saelens"):
        step_ms = 1e3 * args.batch / sps[side]
        print(f"{side} samples/s={sps[side]:.1f} (step {step_ms:.2f} ms)", flush=True)
    print(f"ratio={sps['ours'] / sps['saelens']:.3f}")


if __name__ == "__main__":
    main()
