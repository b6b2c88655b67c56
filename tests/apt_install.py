"""apt-get installs for the tests that need a system program (the slurm tests: slurm-wlm and munge; the browser
tests: chromium), and whether a failure skips them or fails them.

Without root or without apt-get such a test cannot run here and skips, saying why. Under CI (``CI=true``) as root
with apt-get it must run: a failed install then fails it, so a broken install never turns CI green with "skipped".
"""
from __future__ import annotations

import os
import shutil
import subprocess


def sh(*cmd: str, timeout: int = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)


def apt_install(packages: tuple[str, ...], who: str, hint: str = "", timeout: int = 600) -> str | None:
    """Install ``packages`` with apt-get (refreshing the package lists once if the first try fails): None when that
    worked, else why not. ``who`` names the tests in the reason, ``hint`` is added to the root/apt-get reasons."""
    names = " ".join(packages)
    if os.geteuid() != 0:
        return f"{who} need root to apt-get install {names} (not root here{hint})"
    if shutil.which("apt-get") is None:
        return f"{who} need apt-get to install {names} (no apt-get here{hint})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    res = sh("apt-get", "install", "-y", "-qq", *packages, timeout=timeout, env=env)
    if res.returncode != 0:  # stale package lists: refresh once
        sh("apt-get", "update", "-qq", timeout=300, env=env)
        res = sh("apt-get", "install", "-y", "-qq", *packages, timeout=timeout, env=env)
    if res.returncode != 0:
        return f"apt-get install {names} failed: {res.stderr.strip()[-300:]}"
    return None


def must_run() -> bool:
    """Under CI, as root, with apt-get: nothing excuses the tests from running."""
    ci = os.environ.get("CI", "").lower() in ("true", "1")
    return ci and os.geteuid() == 0 and shutil.which("apt-get") is not None


def skip_or_fail(reason: str | None) -> None:
    """Nothing when ``reason`` is None; else skip the calling test, or fail it under :func:`must_run`."""
    if reason is None:
        return
    import pytest

    if must_run():
        pytest.fail(f"CI=true as root with apt-get, yet {reason}", pytrace=False)
    pytest.skip(reason)
