"""Hydra sweeps submitted to a real (one-node) SLURM cluster through hydra-submitit-launcher."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from refusal.sae.io import load_saelens

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
TINY = ["experiment=tiny", "trainer.max_steps=6", "activations.loader.samples_per_epoch=1024", "logger=wandb"]


def submit(cwd: Path, env: dict, *overrides: str, timeout: int = 420) -> subprocess.CompletedProcess:
    env = {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "REFUSAL_CACHE": str(cwd / "cache"),
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    # submitit runs the jobs with sys.executable (this venv's python) in the submission's cwd
    return subprocess.run([sys.executable, str(REPO / "train.py"), "-m", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def job_results(sweep: Path) -> dict[str, tuple]:
    """submitit's own record of every job: {job id: ("success", JobReturn) | ("error", traceback)}."""
    out = {}
    for f in sweep.glob(".submitit/*/*_result.pkl"):
        with open(f, "rb") as fh:
            out[f.name.rsplit("_", 2)[0]] = pickle.load(fh)
    return out


def check_jobs(workdir: Path, ks: list[int]) -> None:
    (sweep,) = (workdir / "multirun" / "tiny").iterdir()
    results = job_results(sweep)
    assert len(results) == len(ks), results
    assert all(r[0] == "success" for r in results.values()), results
    got = []
    for num in range(len(ks)):
        job = sweep / str(num)
        manifest = json.loads((job / "train_manifest.json").read_text())
        (sae_dir,) = manifest["sae_dirs"].values()
        sae, _ = load_saelens(sae_dir)
        got.append(sae.k)
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # each job its own offline W&B run
        assert f"train-{sweep.name}-{num}".encode() in next(runs[0].glob("*.wandb")).read_bytes()
    assert got == ks


def test_submitit_slurm_sweep_runs_two_array_tasks(slurm_cluster, tmp_path):
    res = submit(tmp_path, slurm_cluster, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
                 "hydra.launcher.timeout_min=5", "hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1",
                 "sae.k_percent=0.02,0.05", *TINY)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun" / "tiny").iterdir()
    ids = sorted(job_results(sweep))
    assert len({i.split("_")[0] for i in ids}) == 1 and len(ids) == 2, ids  # one array job, two tasks
    check_jobs(tmp_path, [round(0.02 * 256), round(0.05 * 256)])


def test_project_slurm_preset_submits(slurm_cluster, tmp_path):
    """hydra/launcher=slurm (partition from $SLURM_PARTITION), sized down to this one small node."""
    env = {**slurm_cluster, "SLURM_PARTITION": "debug"}
    res = submit(tmp_path, env, "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0",
                 "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5",
                 "sae.k_percent=0.05", *TINY)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    check_jobs(tmp_path, [round(0.05 * 256)])
    (sweep,) = (tmp_path / "multirun" / "tiny").iterdir()
    (script,) = sweep.glob(".submitit/*/*_submission.sh")
    assert "#SBATCH --partition=debug" in script.read_text()
