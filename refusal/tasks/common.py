"""Steps shared by the entry-point tasks: prompts, model, activation store."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from refusal.activations import CollectionPlan, collect_activations, fingerprint
from refusal.activations import config as activations_config
from refusal.behavior.score import resolve_refusal_tokens
from refusal.data import analyze_splits, build_prompt_set
from refusal.model.loading import LoadedModel
from refusal.runs import TrainRun

log = logging.getLogger(__name__)


def prepare_prompts(cfg: DictConfig, run: TrainRun):
    """Build the prompt set, save it and its split analysis in the run dir, print imbalance warnings."""
    prompts = build_prompt_set(cfg.data)
    analysis = analyze_splits(prompts, cfg.data)
    run.write_prompts(prompts, analysis)
    for w in analysis.get("warnings", []):
        log.warning("data: %s", w)
    return prompts, analysis


def activation_store(cfg: DictConfig, loaded: LoadedModel, prompts) -> tuple[Path, callable, CollectionPlan]:
    """The store dir for this config and a function that collects into it (resuming; only this task's shards
    with ``activations.collect_tasks`` > 1) when called; it returns the store, or None while other tasks'
    shards are missing."""
    plan = activations_config.collection_plan(cfg.activations, loaded.n_layers, loaded.system_prompt,
                                              cfg.seed)
    task = activations_config.collect_task(cfg.activations)
    ids = resolve_refusal_tokens(loaded.tokenizer, loaded.refusal_tokens)
    store_dir = activations_config.store_dir(cfg.activations, cfg.paths.cache_dir,
                                             fingerprint(loaded, prompts, plan, ids))
    return store_dir, (lambda: collect_activations(loaded, prompts, plan, store_dir, ids, task=task)), plan


def optimized_metric(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value of ``optimized_metric`` among the run's logged metrics, what the entry point returns to a sweeper
    (None when it is null, or when this run did not produce it, e.g. a stage that was skipped)."""
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if key not in metrics:
        log.warning("optimized_metric=%r was not produced by this run; it logged %s", key, sorted(metrics))
        return None
    return float(metrics[key])


__all__ = ["activation_store", "optimized_metric", "prepare_prompts"]
