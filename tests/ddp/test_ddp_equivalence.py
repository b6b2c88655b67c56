"""trainer=ddp_cpu (2 gloo ranks, batch B/2 each) trains the same SAE as one process with batch B on the same data.

Tolerance: every exported tensor agrees to 1e-5 x its largest magnitude. The two runs are not bit-identical
because DDP adds the ranks' gradients (and the dead-latent / AuxK sums) in a different order than one process
summing the whole batch; float32 rounding (~1e-7 relative per step) stays near 3e-7 after these 20 Adam steps.
Anything that is not the same computation is far outside it: ranks drawing different rows, or dead-latent
counters kept per rank (measured: 1e-2 relative on W_enc).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
RELATIVE_TOLERANCE = 1e-5
# 20 steps of global batch 64; a low dead-latent threshold so AuxK and the dead counters take part
RUN = ["experiment=tiny", "logger=csv", "trainer.max_steps=20", "trainer.log_every_n_steps=5",
       "activations.loader.samples_per_epoch=2048", "sae.dead_tokens_threshold=300", "sae.lr_warmup_steps=2",
       "sae.b_dec_init=geometric_median"]


def _train(tmp_path: Path, name: str, *overrides: str) -> Path:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "REFUSAL_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    defaults = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "train.yaml").defaults)
    skip_behavior = ["~behavior"] if any(isinstance(d, dict) and "behavior" in d for d in defaults) else []
    cmd = [sys.executable, str(REPO / "train.py"), *RUN, *skip_behavior, *overrides, f"hydra.run.dir={name}"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return tmp_path / name


def test_ddp_cpu_matches_one_process_with_the_global_batch(tmp_path):
    one = _train(tmp_path, "one", "activations.loader.batch_size=64")
    two = _train(tmp_path, "two", "trainer=ddp_cpu", "activations.loader.batch_size=32")
    assert (two / "train_rank1.log").exists()  # really two processes
    aux = [float(v) for v in _column(one, "aux_loss") if v]
    assert aux and max(aux) > 0  # AuxK was active (some latents were dead)
    (sae_one,) = (one / "saes").iterdir()
    weights_one = load_file(sae_one / "sae_weights.safetensors")
    weights_two = load_file(two / "saes" / sae_one.name / "sae_weights.safetensors")
    for name, w in weights_one.items():
        torch.testing.assert_close(weights_two[name], w, rtol=0, atol=RELATIVE_TOLERANCE * float(w.abs().max()),
                                   msg=lambda m, name=name: f"{name}: {m}")
    ev_one, ev_two = (json.loads((d / "train_manifest.json").read_text())["metrics"]["val/explained_variance"]
                      for d in (one, two))
    assert abs(ev_one - ev_two) < 1e-5


def _column(run_dir: Path, suffix: str) -> list[str]:
    lines = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    col = next(i for i, h in enumerate(lines[0].split(",")) if h.endswith(suffix))
    return [ln.split(",")[col] for ln in lines[1:]]
