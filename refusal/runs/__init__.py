"""Run records: each stage's run dir as an object that owns its file names, writes and reads them, adopts the
config of the runs it builds on, and checks that those runs belong together.

- :class:`TrainRun` / :class:`TrainRecord`: a train.py (or collect) run dir; checkpoints in :mod:`.checkpoints`.
- :class:`DiscoverRun` / :class:`DiscoverRecord`: a discover.py run dir.
- :class:`EvaluateRun`: an evaluate.py run dir.
- :func:`adopt_run_config`, :func:`saved_config`: the config a run saved (``.hydra/config.yaml``).
- :func:`check_model`: the loaded model is the one the runs read were made with.
"""
from refusal.runs.checks import check_model
from refusal.runs.discover import DiscoverRecord, DiscoverRun
from refusal.runs.evaluate import EvaluateRun
from refusal.runs.saved import adopt_run_config, saved_config
from refusal.runs.train import TrainRecord, TrainRun

__all__ = ["DiscoverRecord", "DiscoverRun", "EvaluateRun", "TrainRecord", "TrainRun", "adopt_run_config",
           "check_model", "saved_config"]
