"""The `make demo` pipeline on the real embedded model (slow: minutes on 2 cores)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script, *overrides, cwd):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    res = subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.mark.slow
def test_demo_trains_a_good_sae(tmp_path):
    train_dir = tmp_path / "train"
    out = _run("train.py", "experiment=demo", "model=smollm2_135m", f"hydra.run.dir={train_dir}", cwd=tmp_path)
    assert "val/explained_variance" in out.stdout
    manifest = json.loads((train_dir / "train_manifest.json").read_text())
    (hook,) = manifest["hooks"]
    assert hook == "blocks.15.hook_resid_post"
    metrics = manifest["metrics"]
    assert metrics["val/explained_variance"] >= 0.8, metrics
    assert metrics[f"val/{hook}/l0"] <= 64, metrics
    assert list((train_dir / "wandb").glob("offline-run-*"))
