"""Run the entry points as a user would: a subprocess in a temp dir, tiny model, offline W&B."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_entry(script: str, *overrides: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
           "REFUSAL_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def run_entry():
    """``run_entry("train.py", *overrides, cwd=dir)`` -> CompletedProcess."""
    return _run_entry
