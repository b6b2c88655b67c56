"""Preemption: a training job stopped by SIGTERM (what SLURM sends on requeue/preemption) and started again as the
same SLURM job (same SLURM_JOB_ID, so the same run dir, with ckpt_path=last) ends with exactly the SAE of an
uninterrupted run. A subprocess plays the job: a real ``scontrol requeue`` adds SLURM's requeue delays and makes
the moment of the kill a race; the SLURM requeue itself is submitit's (see README "Run on a SLURM cluster")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
HOOK = "blocks.1.hook_resid_post"
STEPS = 160
RUN = ["experiment=tiny", "logger=csv", f"trainer.max_steps={STEPS}", "activations.loader.samples_per_epoch=1024",
       "checkpoint_every_n_steps=4", "ckpt_path=last", "+trainer.enable_progress_bar=false"]


def start(cwd: Path, *extra: str, job_id: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "REFUSAL_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    if job_id:
        env["SLURM_JOB_ID"] = job_id
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *RUN, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "saes" / HOOK / "sae_weights.safetensors")


def test_sigterm_then_restart_as_same_job_matches_uninterrupted(tmp_path):
    (tmp_path / "cache").mkdir()
    ref_proc = start(tmp_path, f"hydra.run.dir={tmp_path / 'ref'}")
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
    stopped_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < stopped_at < STEPS

    again = start(tmp_path, job_id="4242")  # the requeued job: same id, same dir, resumes from last.ckpt
    out = again.communicate(timeout=180)[0]
    assert again.returncode == 0, out[-3000:]
    assert ref_proc.wait(timeout=180) == 0, ref_proc.communicate()[0][-3000:]
    assert not [p for p in (tmp_path / "outputs" / "tiny").iterdir() if p.name != "4242"]  # no fresh timestamp dir
    ref, resumed = weights(tmp_path / "ref"), weights(run_dir)
    assert ref.keys() == resumed.keys()
    for name in ref:  # same process layout, one thread, same data order: bit-identical
        assert torch.equal(ref[name], resumed[name]), name
