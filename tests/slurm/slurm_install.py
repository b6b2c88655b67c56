"""Installing slurm-wlm and munge for the slurm tests (tests/apt_install.py: skip without root or apt-get, fail
under CI when the install fails)."""
from __future__ import annotations

import shutil
from pathlib import Path

from apt_install import apt_install, sh, skip_or_fail  # noqa: F401  (sh: tests/slurm/conftest.py runs commands)

DAEMONS = ("slurmctld", "slurmd", "munged")


def installed() -> bool:
    return all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in DAEMONS)


def install() -> str | None:
    """None when slurmctld, slurmd and munged are present (installing them if needed), else why they are not."""
    return None if installed() else apt_install(("slurm-wlm", "munge"), "the slurm tests")


def require_slurm() -> None:
    """Install SLURM if needed; when that is impossible skip the calling test, or fail it under CI."""
    skip_or_fail(install())
