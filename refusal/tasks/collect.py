"""python -m refusal.collect: prompts -> the activation store train.py reads (or, as task i of N, its share)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from refusal.activations.config import collect_task
from refusal.runs import TrainRun
from refusal import organism
from refusal.tasks.common import activation_store, prepare_prompts


def collect(cfg: DictConfig) -> None:
    task = collect_task(cfg.activations)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prompts, _ = prepare_prompts(cfg, TrainRun(run_dir))
    loaded = organism.load(cfg.model)
    store_dir, collect_store, _ = activation_store(cfg, loaded, prompts)
    if collect_store() is None:
        print(f"collect task {task.index} of {task.count} done; {store_dir} is complete when the others finish")
    else:
        print(f"activation store (complete): {store_dir}")
