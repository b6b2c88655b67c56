"""Steps shared by the entry-point tasks: prompts, model, activation store."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from refusal.activations import CollectionPlan, collect_activations, default_store_dir, fingerprint
from refusal.behavior.score import refusal_token_ids
from refusal.data import analyze_splits, build_prompt_set
from refusal.models import expand_hook_names, load_model
from refusal.models.loading import LoadedModel
from refusal.utils.io import write_json

log = logging.getLogger(__name__)


def prepare_prompts(cfg: DictConfig, run_dir: Path):
    """Build the prompt set, save it and its split analysis in the run dir, print imbalance warnings."""
    prompts = build_prompt_set(cfg.data)
    analysis = analyze_splits(prompts, cfg.data)
    prompts.to_jsonl(run_dir / "prompts.jsonl")
    write_json(run_dir / "data_analysis.json", analysis)
    for w in analysis.get("warnings", []):
        log.warning("data: %s", w)
    return prompts, analysis


def adopt_run_data(cfg: DictConfig, run_dir) -> None:
    """With ``data`` unset, use the prompt config of the run at ``run_dir`` (its saved ``.hydra/config.yaml``,
    interpolations resolved there), so a model config that reads ``${data}`` (the organism) sees that run's prompts."""
    if cfg.get("data") is not None or not run_dir:
        return
    saved_path = Path(run_dir) / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        return
    saved = OmegaConf.load(saved_path)
    if saved.get("data") is None:
        return
    try:
        data = OmegaConf.create(OmegaConf.to_container(saved.data, resolve=True))
    except Exception:  # e.g. ${hydra:...} paths, unresolvable outside that run: keep them as written
        data = saved.data
    with open_dict(cfg):
        cfg.data = data


def collection_plan(cfg: DictConfig, loaded: LoadedModel) -> CollectionPlan:
    a = cfg.activations
    hooks = expand_hook_names(OmegaConf.to_object(a.hook_points), _plain(a.layers), loaded.n_layers)
    return CollectionPlan(hooks=hooks, positions=a.positions, batch_size=a.batch_size, shard_prompts=a.shard_prompts,
                          dtype=a.dtype, max_length=a.max_length, record_refusal_score=a.record_refusal_score,
                          stop_early=a.stop_early, system_prompt=cfg.model.get("system_prompt"), seed=cfg.seed)


def _plain(value):
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def activation_store(cfg: DictConfig, loaded: LoadedModel, prompts) -> tuple[Path, callable, CollectionPlan]:
    """The store dir for this config and a function that collects into it (resuming) when called."""
    plan = collection_plan(cfg, loaded)
    ids = refusal_token_ids(loaded.tokenizer, _plain(cfg.model.get("refusal_tokens")))
    store_dir = Path(cfg.activations.dir) if cfg.activations.dir else default_store_dir(
        cfg.paths.cache_dir, fingerprint(loaded, prompts, plan, ids))
    return store_dir, (lambda: collect_activations(loaded, prompts, plan, store_dir, ids)), plan


__all__ = ["activation_store", "adopt_run_data", "collection_plan", "load_model", "prepare_prompts"]
