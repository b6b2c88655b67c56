"""A real one-node SLURM cluster for the session: munged + slurmctld + slurmd on this host.

Installs ``slurm-wlm`` and ``munge`` with apt when missing (CI runs as root). Everything SLURM writes lives in a
temp dir (config, state, spool, PID files, free ports); clients find it through ``SLURM_CONF``. The daemons are
stopped afterwards by the PIDs in their PID files. Skips, with the reason, only without root or without apt
(see :mod:`slurm_install`; under CI a failed install fails).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from slurm_install import require_slurm, sh as _sh

MUNGE_PID = Path("/run/munge/munged.pid")


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _start_munge() -> bool:
    """Start munged unless one runs already; True when this session started it."""
    if _alive(MUNGE_PID):
        return False
    for d in ("/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    for d in ("/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge"):
        shutil.chown(d, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    res = _sh("su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged")
    if res.returncode != 0:
        raise RuntimeError(f"munged did not start: {res.stderr}")
    return True


def _write_conf(root: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    mem_mb = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))) // 1024 - 1024
    for d in ("state", "spool", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=pytest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmdSpoolDir={root}/spool
StateSaveLocation={root}/state
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmUser=root
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _stop(pid_file: Path) -> None:
    pid = _alive(pid_file)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if _alive(pid_file) != pid:
            return
        time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Yields the environment (a dict) under which sbatch/squeue/scontrol and submitit reach the cluster."""
    require_slurm()
    if os.geteuid() != 0:
        pytest.skip("the slurm tests need root to run slurmctld/slurmd as SlurmUser=root (not root here)")
    root = Path(tmp_path_factory.mktemp("slurm"))
    root.chmod(0o755)
    conf = _write_conf(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started_munge = _start_munge()
    pids = [root / "slurmctld.pid", root / "slurmd.pid"]
    try:
        for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
            res = _sh(daemon, "-f", str(conf), env=env)
            assert res.returncode == 0, f"{daemon} did not start: {res.stderr}"
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            state = _sh("sinfo", "-h", "-o", "%T", env=env).stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        logs = "".join(p.read_text()[-1500:] for p in (root / "log").glob("*.log"))
        assert state == "idle", f"the node never became idle (sinfo: {state!r}); logs:\n{logs}"
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(conf)
        yield env
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
    finally:
        for p in pids[::-1]:
            _stop(p)
        if started_munge:
            _stop(MUNGE_PID)
