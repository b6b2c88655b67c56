"""Installing slurm-wlm and munge for the slurm tests, and whether a failure skips them or fails them.

Without root or without apt-get the tests cannot run here and skip, saying why. Under CI (``CI=true``) as root
with apt-get they must run: a failed install then fails them, so a broken install never turns CI green with
"skipped".
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DAEMONS = ("slurmctld", "slurmd", "munged")


def sh(*cmd: str, timeout: int = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)


def installed() -> bool:
    return all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in DAEMONS)


def install() -> str | None:
    """None when slurmctld, slurmd and munged are present (installing them if needed), else why they are not."""
    if installed():
        return None
    if os.geteuid() != 0:
        return "the slurm tests need root to install and run slurm-wlm/munge (not root here)"
    if shutil.which("apt-get") is None:
        return "the slurm tests need apt-get to install slurm-wlm and munge (no apt-get here)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    res = sh("apt-get", "install", "-y", "-qq", "slurm-wlm", "munge", timeout=600, env=env)
    if res.returncode != 0:  # stale package lists: refresh once
        sh("apt-get", "update", "-qq", timeout=300, env=env)
        res = sh("apt-get", "install", "-y", "-qq", "slurm-wlm", "munge", timeout=600, env=env)
    if res.returncode != 0:
        return f"apt-get install slurm-wlm munge failed: {res.stderr.strip()[-300:]}"
    return None


def must_run() -> bool:
    """Under CI, as root, with apt-get: nothing excuses the slurm tests from running."""
    ci = os.environ.get("CI", "").lower() in ("true", "1")
    return ci and os.geteuid() == 0 and shutil.which("apt-get") is not None


def require_slurm() -> None:
    """Install SLURM if needed; when that is impossible skip the calling test, or fail it under :func:`must_run`."""
    reason = install()
    if reason is None:
        return
    if must_run():
        pytest.fail(f"CI=true as root with apt-get, yet {reason}", pytrace=False)
    pytest.skip(reason)
