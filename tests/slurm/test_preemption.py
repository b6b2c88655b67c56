"""Preemption: a training job stopped by SIGTERM (what SLURM sends on requeue/preemption) or killed outright
(SIGKILL, e.g. the node lost) and started again as the same SLURM job (same SLURM_JOB_ID, so the same run dir,
with ckpt_path=last) resumes from its checkpoint, trains only the steps left, and ends with exactly the SAE of an
uninterrupted run. A subprocess plays the job: a real ``scontrol requeue`` adds SLURM's requeue delays and makes
the moment of the kill a race; the SLURM requeue itself is submitit's (see README "Run on a SLURM cluster")."""
from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refusal.runs.checkpoints import global_step, is_intact

REPO = Path(__file__).resolve().parents[2]
HOOK = "blocks.1.hook_resid_post"
STEPS = 160
RUN = ["experiment=tiny", "logger=csv", f"trainer.max_steps={STEPS}", "activations.loader.samples_per_epoch=1024",
       "checkpoint_every_n_steps=4", "ckpt_path=last", "+trainer.enable_progress_bar=false",
       "trainer.log_every_n_steps=1"]


def start(cwd: Path, *extra: str, job_id: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "REFUSAL_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    if job_id:
        env["SLURM_JOB_ID"] = job_id
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *RUN, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "saes" / HOOK / "sae_weights.safetensors")


def trained_steps(run_dir: Path) -> list[int]:
    """The steps the last process to train in ``run_dir`` trained (the CSV logger starts its file afresh in each
    process; with log_every_n_steps=1 it writes one train row per step)."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return sorted(int(r["step"]) for r in csv.DictReader(f) if r["train/loss"])


def resumed_from(out: str) -> tuple[str, int]:
    """(checkpoint, step) of the process's one-line resume message."""
    (line,) = [ln for ln in out.splitlines() if "resuming from " in ln]
    path, step = re.search(r"resuming from (\S+) \(step (\d+)\)", line).groups()
    return path, int(step)


def saved_step(path: Path) -> int:
    """The step of the checkpoint at ``path`` while a job may be writing it; -1 when absent or incomplete."""
    try:
        return global_step(path) if is_intact(path) else -1
    except Exception:  # rewritten between the two reads
        return -1


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The SAE of an uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    (root / "cache").mkdir()
    proc = start(root, f"hydra.run.dir={root / 'ref'}")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    assert trained_steps(root / "ref") == list(range(STEPS))
    return weights(root / "ref")


def restart_matches(tmp_path: Path, job_id: str, reference: dict, expected: dict[str, int]) -> None:
    """The requeued job resumes from one of the ``expected`` {checkpoint: step}, trains only the steps after it,
    and ends with the reference SAE."""
    run_dir = tmp_path / "outputs" / "tiny" / job_id
    again = start(tmp_path, job_id=job_id)  # the requeued job: same id, same dir, resumes from its checkpoints
    out = again.communicate(timeout=180)[0]
    assert again.returncode == 0, out[-3000:]
    path, step = resumed_from(out)
    assert expected.get(Path(path).name) == step and 0 < step < STEPS, (path, step, expected)
    assert trained_steps(run_dir) == list(range(step, STEPS))  # not from step 0
    assert [p.name for p in (tmp_path / "outputs" / "tiny").iterdir()] == [job_id]  # no fresh timestamp dir
    resumed = weights(run_dir)
    assert reference.keys() == resumed.keys()
    for name in reference:  # same process layout, one thread, same data order: bit-identical
        assert torch.equal(reference[name], resumed[name]), name


def test_sigterm_then_restart_as_same_job_matches_uninterrupted(tmp_path, reference):
    (tmp_path / "cache").mkdir()
    job = start(tmp_path, job_id="4242")  # no hydra.run.dir: the job id names the run dir
    run_dir = tmp_path / "outputs" / "tiny" / "4242"
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)  # Lightning stops after the current step
    out = job.communicate(timeout=120)[0]
    assert "Received SIGTERM" in out and not (run_dir / "saes").exists(), "not preempted mid-run:\n" + out[-2000:]
    assert last.exists(), out[-3000:]
    stopped_at = global_step(last)
    assert 0 < stopped_at < STEPS
    restart_matches(tmp_path, "4242", reference, {"last.ckpt": stopped_at})


def test_sigkill_then_restart_as_same_job_matches_uninterrupted(tmp_path, reference):
    """kill -9 gives Lightning no chance to stop cleanly, possibly mid-write of a checkpoint: the restart resumes
    from the newest intact checkpoint."""
    (tmp_path / "cache").mkdir()
    job = start(tmp_path, job_id="4343")
    ckpts = tmp_path / "outputs" / "tiny" / "4343" / "checkpoints"
    deadline = time.time() + 120
    while job.poll() is None and time.time() < deadline:  # two checkpoints saved: one is intact at any moment
        if saved_step(ckpts / "last.ckpt") >= 8:
            break
        time.sleep(0.01)
    job.kill()
    out = job.communicate(timeout=60)[0]
    assert job.returncode == -signal.SIGKILL and not (ckpts.parent / "saes").exists(), "not killed mid-run:\n" + out[-2000:]
    intact = {p.name: global_step(p) for p in ckpts.glob("*.ckpt") if is_intact(p)}
    restart_matches(tmp_path, "4343", reference, intact)
