"""The build in a child process whose MKL is pinned (portable.py): ``python -m refusal.organism <model.yaml>`` with
``MKL_CBWR`` set, its log passed on line by line, killed with its parent, its bad-input error raised again here."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from omegaconf import OmegaConf

from refusal.errors import ConfigError
from refusal.organism.portable import MKL_CBWR, build_mode

log = logging.getLogger(__name__)
CHILD_FLAG = "REFUSAL_ORGANISM_CHILD"  # the parent's pid, set in the child: it builds where it is, pinned or not
KEY_FLAG = "REFUSAL_ORGANISM_KEY"  # the cache key the parent waits for: the child stops if its own differs
EXIT_CONFIG = 3  # the child's exit status for a ConfigError; its last line is the message


def die_with_parent() -> None:
    """In a child that ``build_in_child`` started: end when the parent's thread that started it ends (a kill -9 of
    a run ends its build too). Linux only (elsewhere the build finishes on its own and is published for the next
    run)."""
    if not sys.platform.startswith("linux") or not os.environ.get(CHILD_FLAG):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ.get(CHILD_FLAG):  # the parent ended before the line above
        os._exit(1)


def build_in_child(cfg, key: str) -> None:
    """Run the build of the organism ``cfg`` (a ``model`` config node) in a pinned child process; return when it
    has published the build under ``key``, raise when it failed."""
    with tempfile.TemporaryDirectory(prefix="organism-child-") as tmp:
        path = Path(tmp) / "model.yaml"
        path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        env = os.environ | {"MKL_CBWR": MKL_CBWR, CHILD_FLAG: str(os.getpid()), KEY_FLAG: key}
        log.info("organism: building in a child process with MKL_CBWR=%s (MKL's mode there: %s; the cache key names "
                 "it unless it is the AVX2 branch)", MKL_CBWR, build_mode())
        proc = subprocess.Popen([sys.executable, "-m", "refusal.organism", str(path)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        tail: deque[str] = deque(maxlen=30)
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            log.info("[build] %s", tail[-1])
        rc = proc.wait()
    if rc == EXIT_CONFIG:
        raise ConfigError(tail[-1] if tail else "the organism build refused its config")
    if rc != 0:
        raise RuntimeError(f"the organism build failed in its child process (exit {rc}); its last lines:\n"
                           + "\n".join(tail))
