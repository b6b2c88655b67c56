"""trainer=ddp_cpu: 2 gloo processes train one SAE; the extra rank joins rank 0's run dir, only rank 0 logs to W&B."""
import json
import os
import subprocess
import sys
from pathlib import Path

from refusal.sae.io import load_saelens

REPO = Path(__file__).resolve().parents[2]


def test_ddp_sweep_job_shares_one_run_dir_and_one_wandb_run(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "REFUSAL_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "trainer=ddp_cpu", "sae.k_percent=0.05", "experiment=tiny",
           "trainer.max_steps=6", "activations.loader.samples_per_epoch=1024", "logger=wandb"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "world_size: 2" in res.stderr + res.stdout or "distributed_backend=gloo" in res.stderr + res.stdout
    # the rank-1 process ran this job (not the sweep again): one sweep dir, one job dir, no run dir under outputs/
    (sweep,) = (tmp_path / "multirun" / "tiny").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]
    assert not (tmp_path / "outputs").exists()
    job = sweep / "0"
    assert (job / "train_rank1.log").exists()  # rank 1 wrote into rank 0's run dir
    runs = list((job / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # W&B on rank 0 only
    manifest = json.loads((job / "train_manifest.json").read_text())
    (sae_dir,) = manifest["sae_dirs"].values()
    sae, _ = load_saelens(sae_dir)
    assert sae.k == round(0.05 * 256)
