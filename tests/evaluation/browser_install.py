"""Installing Chromium for the browser tests, and whether a failure skips them or fails them (the slurm tests'
pattern, tests/slurm/slurm_install.py).

Playwright drives the system Chromium (``apt-get install chromium``; Playwright's own browser download needs the
internet). Without the ``playwright`` package, without root or without apt-get the tests skip, saying why. Under
CI (``CI=true``) as root with apt-get they must run: a failed install then fails them. ``make setup`` runs this
file once, so the install happens before the tests; it never fails the setup.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from refusal.evaluation.screenshot import chromium_path  # noqa: E402

PACKAGE = "chromium"


def sh(*cmd: str, timeout: int = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)


def install() -> str | None:
    """None when Chromium is present (installing it if needed), else why it is not."""
    if chromium_path():
        return None
    if os.geteuid() != 0:
        return f"the browser tests need root to apt-get install {PACKAGE} (not root here; or set CHROMIUM=<path>)"
    if shutil.which("apt-get") is None:
        return f"the browser tests need apt-get to install {PACKAGE} (no apt-get here; or set CHROMIUM=<path>)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    res = sh("apt-get", "install", "-y", "-qq", PACKAGE, timeout=900, env=env)
    if res.returncode != 0:  # stale package lists: refresh once
        sh("apt-get", "update", "-qq", timeout=300, env=env)
        res = sh("apt-get", "install", "-y", "-qq", PACKAGE, timeout=900, env=env)
    if res.returncode != 0 or not chromium_path():
        return f"apt-get install {PACKAGE} failed: {res.stderr.strip()[-300:]}"
    return None


def must_run() -> bool:
    """Under CI, as root, with apt-get: nothing excuses the browser tests from running."""
    ci = os.environ.get("CI", "").lower() in ("true", "1")
    return ci and os.geteuid() == 0 and shutil.which("apt-get") is not None


def require_browser() -> str:
    """The Chromium path, installing it if needed; when that is impossible skip the calling test, or fail it under
    :func:`must_run`."""
    import pytest

    if importlib.util.find_spec("playwright") is None:
        reason = "the browser tests need the playwright package (pip install -e '.[dev]')"
    else:
        reason = install()
    if reason is None:
        return chromium_path()
    if must_run():
        pytest.fail(f"CI=true as root with apt-get, yet {reason}", pytrace=False)
    pytest.skip(reason)


if __name__ == "__main__":  # make setup: install when possible, say why not otherwise, never fail
    why = install()
    print(f"chromium: {chromium_path()}" if why is None else f"chromium not installed ({why}): "
          "tests/evaluation/test_browser.py will skip")
