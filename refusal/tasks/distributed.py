"""DDP under Hydra: ranks > 0 re-run the entry point as *this* Hydra job, into rank 0's output dir.

Lightning starts ranks > 0 by running the script again with the original ``sys.argv``. Under ``-m`` that argv is
the whole sweep (each extra rank would start its own multirun) and the run dir it passes is ``hydra.run.dir``, not
the sweep job's dir. Here the command is rebuilt from the job's own overrides and its resolved output dir, so every
rank of a job (single run or sweep job) shares one run dir; the extra ranks write no ``.hydra/`` and log to
``<job name>_rank<N>.log``.
"""
from __future__ import annotations

import sys
from unittest import mock

import lightning.pytorch.strategies.launchers.subprocess_script as _script
from lightning.pytorch.strategies import DDPStrategy


def hydra_job_command(local_rank: int) -> tuple[list[str], str]:
    """(argv, cwd) that re-runs the current Hydra job as rank ``local_rank``."""
    import __main__
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if getattr(__main__, "__spec__", None) is not None and __main__.__spec__.name != "__main__":
        entry = ["-m", __main__.__spec__.name]
    else:
        entry = [str(__main__.__file__)]
    command = [sys.executable, *entry, *hc.overrides.task, f'hydra.run.dir="{hc.runtime.output_dir}"',
               f"hydra.job.name={hc.job.name}_rank{local_rank}", "hydra.output_subdir=null"]
    return command, hc.runtime.cwd


class _HydraJobLauncher(_script._SubprocessScriptLauncher):
    def _call_children_scripts(self) -> None:
        with mock.patch.object(_script, "_hydra_subprocess_cmd", hydra_job_command):
            super()._call_children_scripts()


class HydraDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose extra ranks join the current Hydra job (see the module doc)."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _script._SubprocessScriptLauncher:
            self._launcher = _HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
