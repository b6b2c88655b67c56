"""Steps shared by the entry-point tasks: prompts, model, activation store."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from refusal.activations import CollectionPlan, collect_activations, default_store_dir, fingerprint
from refusal.activations.collect_tasks import CollectTask
from refusal.behavior.score import refusal_token_ids
from refusal.data import analyze_splits, build_prompt_set
from refusal.model import expand_hook_names, load_model
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


def collection_plan(cfg: DictConfig, loaded: LoadedModel) -> CollectionPlan:
    a = cfg.activations
    hooks = expand_hook_names(OmegaConf.to_object(a.hook_points), _plain(a.layers), loaded.n_layers)
    return CollectionPlan(hooks=hooks, positions=a.positions, batch_size=a.batch_size, shard_prompts=a.shard_prompts,
                          dtype=a.dtype, max_length=a.max_length, record_refusal_score=a.record_refusal_score,
                          stop_early=a.stop_early, system_prompt=cfg.model.get("system_prompt"), seed=cfg.seed)


def _plain(value):
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def activation_store(cfg: DictConfig, loaded: LoadedModel, prompts) -> tuple[Path, callable, CollectionPlan]:
    """The store dir for this config and a function that collects into it (resuming; only this task's shards
    with ``activations.collect_tasks`` > 1) when called; it returns the store, or None while other tasks'
    shards are missing."""
    plan = collection_plan(cfg, loaded)
    task = CollectTask.from_config(cfg.activations.collect_tasks, cfg.activations.collect_task_index)
    ids = refusal_token_ids(loaded.tokenizer, _plain(cfg.model.get("refusal_tokens")))
    store_dir = Path(cfg.activations.dir) if cfg.activations.dir else default_store_dir(
        cfg.paths.cache_dir, fingerprint(loaded, prompts, plan, ids))
    return store_dir, (lambda: collect_activations(loaded, prompts, plan, store_dir, ids, task=task)), plan


__all__ = ["activation_store", "collection_plan", "load_model", "prepare_prompts"]
