"""Loggers from the ``logger`` config: W&B (offline by default, never fatal) and CSV."""
from __future__ import annotations

import logging
import math
import os
import secrets
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from refusal.utils.io import atomic_path

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_run_id"


def run_identity() -> tuple[str, str | None]:
    """(run name, sweep group) from Hydra's runtime: each multirun job is its own run, grouped by the sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:  # not under Hydra (tests, notebooks)
        return "run", None
    out = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir).name
        return f"{hc.job.name}-{sweep}-{hc.job.num}", f"{hc.job.name}-{sweep}"
    return f"{hc.job.name}-{out.name}", None


def wandb_run_id(output_dir: str | Path, resume: bool) -> str:
    """The W&B run id of the run in ``output_dir``: the one kept in ``output_dir/WANDB_ID_FILE`` when the run resumes
    (so W&B continues the same run), else a new one, kept there for a later resume (written by rank 0 only)."""
    path = Path(output_dir) / WANDB_ID_FILE
    kept = path.read_text().strip() if resume and path.is_file() else ""
    if kept:
        return kept
    run_id = secrets.token_hex(4)  # W&B ids are [a-z0-9]; from os.urandom, so seeding does not repeat them
    if rank_zero_only.rank == 0:
        with atomic_path(path) as tmp:
            tmp.write_text(run_id + "\n")
    return run_id


def build_loggers(logger_cfg, task_name: str, output_dir: str | Path, resume: bool = False) -> list[Logger]:
    """The config's loggers; ``resume``: this run continues an earlier one in ``output_dir`` (a train run from its
    checkpoint), whose W&B run it continues too."""
    loggers: list[Logger] = []
    name, group = run_identity()
    for key, node in (logger_cfg or {}).items():
        if node is None:  # a logger of the group's schema that this config does not use
            continue
        target = str(node.get("_target_", ""))
        if target.endswith("WandbLogger"):
            kwargs = {"name": node.get("name") or name, "group": node.get("group") or group or task_name,
                      "id": wandb_run_id(output_dir, resume), "resume": "allow"}
            os.environ.setdefault("WANDB_SILENT", "true")
            try:
                wb = instantiate(node, **kwargs)
                _ = wb.experiment  # start the run now, so a failure is caught here and not mid-training
                loggers.append(wb)
            except Exception as e:  # unreachable server, bad key, ...: keep training, log to CSV instead
                log.warning("W&B could not start (%s); logging to CSV instead", str(e).splitlines()[0])
                loggers.append(CSVLogger(save_dir=str(output_dir), name="csv", version=""))
        else:
            loggers.append(instantiate(node))
    return loggers


def json_metrics(prefix: str, doc: dict, paths) -> dict[str, float]:
    """``{prefix/path: value}`` for every JSON path (``"global_test/p_value"`` = ``doc["global_test"]["p_value"]``)
    that holds a finite number: a logged metric is named by where the same value sits in the run's JSON."""
    out = {}
    for path in paths:
        value = doc
        for part in path.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}/{path}"] = float(value)
    return out


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: one column per config key in W&B and CSV."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_config(loggers: list[Logger], cfg) -> None:
    from omegaconf import OmegaConf

    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    for lg in loggers:
        lg.log_hyperparams(params)


def wandb_run(loggers: list[Logger]):
    """The active W&B run of these loggers, or None."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            return lg.experiment
    return None


def log_table(loggers: list[Logger], key: str, rows: list[dict]) -> None:
    """Log a list of dicts as a W&B table (no-op without W&B)."""
    run = wandb_run(loggers)
    if run is None or not rows:
        return
    import wandb

    columns = list(rows[0])
    run.log({key: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})


def _artifact(name: str, kind: str, paths, metadata: dict | None):
    import wandb

    art = wandb.Artifact(name=name.replace("/", "-"), type=kind, metadata=metadata or {})
    if isinstance(paths, (str, Path)):
        art.add_dir(str(paths))
    else:
        for p in map(Path, paths):
            if p.is_dir():
                art.add_dir(str(p), name=p.name)
            else:
                art.add_file(str(p), name=p.name)
    return art


def log_artifact(loggers: list[Logger], name: str, kind: str, paths, metadata: dict | None = None) -> None:
    """Log ``paths`` (a directory, or a list of files and directories, each kept under its own name) as one W&B
    artifact (no-op without W&B)."""
    run = wandb_run(loggers)
    if run is None:
        return
    run.log_artifact(_artifact(name, kind, paths, metadata))


def use_artifact(loggers: list[Logger], name: str, kind: str, paths, metadata: dict | None = None) -> None:
    """Record that this run used the artifact an earlier run logged with ``log_artifact(name, kind, paths,
    metadata)`` (no-op without W&B; a failure is a warning). The same files give the same digest, so W&B resolves
    it to the earlier run's version: the lineage train -> discover -> evaluate. Online: ``run.use_artifact``.
    Offline W&B refuses ``run.use_artifact`` (TypeError, wandb 0.31) and there is no artifact id to name; the run
    instead records the artifact with ``use_after_commit`` (what ``run.use_artifact`` does online with an
    artifact not yet logged), which ``wandb sync`` commits (deduplicated by digest) and marks as used by this run."""
    run = wandb_run(loggers)
    if run is None:
        return
    try:
        art = _artifact(name, kind, paths, metadata)
        if run.offline:
            run._log_artifact(art, use_after_commit=True)
        else:
            run.use_artifact(art)
    except Exception as e:
        log.warning("W&B could not record the use of artifact %s (%s)", name, str(e).splitlines()[0])


def finish() -> None:
    """End the W&B run of this process if one is active (multirun jobs must never share a run)."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as e:
        log.warning("wandb.finish failed: %s", e)
