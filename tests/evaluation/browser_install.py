"""Installing Chromium for the browser tests, and whether a failure skips them or fails them (the slurm tests'
pattern, both in tests/apt_install.py).

Playwright drives the system Chromium (``apt-get install chromium``; Playwright's own browser download needs the
internet). Without the ``playwright`` package, without root or without apt-get the tests skip, saying why. Under
CI (``CI=true``) as root with apt-get they must run: a failed install then fails them. ``make setup`` runs this
file once, so the install happens before the tests; it never fails the setup.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]
from apt_install import apt_install, skip_or_fail  # noqa: E402
from refusal.evaluation.screenshot import chromium_path  # noqa: E402

PACKAGE = "chromium"


def install() -> str | None:
    """None when Chromium is present (installing it if needed), else why it is not."""
    if chromium_path():
        return None
    why = apt_install((PACKAGE,), "the browser tests", hint="; or set CHROMIUM=<path>", timeout=900)
    if why is None and not chromium_path():
        why = f"apt-get install {PACKAGE} failed: no chromium on the PATH afterwards"
    return why


def require_browser() -> str:
    """The Chromium path, installing it if needed; when that is impossible skip the calling test, or fail it under
    CI (tests/apt_install.py)."""
    if importlib.util.find_spec("playwright") is None:
        skip_or_fail("the browser tests need the playwright package (pip install -e '.[dev]')")
    skip_or_fail(install())
    return chromium_path()


if __name__ == "__main__":  # make setup: install when possible, say why not otherwise, never fail
    why = install()
    print(f"chromium: {chromium_path()}" if why is None else f"chromium not installed ({why}): "
          "tests/evaluation/test_browser.py will skip")
