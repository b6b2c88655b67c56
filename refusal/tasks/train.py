"""train.py's task: prompts -> activations -> one SAE per hook, exported in SAELens format."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from refusal.activations import config as activations_config
from refusal.behavior.baseline import measure_baseline
from refusal import organism
from refusal.model.hooks import hook_width
from refusal.sae.config import SAEConfig
from refusal.sae.module import SAELightningModule
from refusal.runs import TrainRun
from refusal.tasks.common import activation_store, optimized_metric, prepare_prompts
from refusal.logger.loggers import build_loggers, log_artifact, log_config, log_table
from refusal.utils.io import read_json, stable_hash

log = logging.getLogger(__name__)
MONITOR = "val/explained_variance"  # the checkpoint kept besides last.ckpt: the best on this


def baseline_behavior(loaded, prompts, behavior_cfg, run: TrainRun, loggers) -> dict:
    """The model's refusal behavior before any SAE (``behavior`` group); a resumed run reuses a finished
    measurement of the same model, prompts and settings."""
    path = run.baseline
    settings = OmegaConf.to_container(behavior_cfg, resolve=True)
    if path.is_file():
        done = read_json(path)
        if (done.get("weights_hash"), done.get("prompts_hash"), done.get("settings")) == (
                loaded.weights_hash, prompts.filter(split=behavior_cfg.split).content_hash(), settings):
            log.info("behavior: reusing %s", path)
            return done
    summary, items = measure_baseline(loaded, prompts, behavior_cfg, loggers, extra={"settings": settings})
    run.write_behavior(summary, items)
    rates = ", ".join(f"{label} {rate:.1%}" for label, rate in summary["refusal_rate"].items())
    print(f"refusal rate on the {behavior_cfg.split} split ({loaded.name}): {rates}  [{path}]")
    return summary


def train(cfg: DictConfig) -> float:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = TrainRun(run_dir)
    ckpt = run.resume_from(cfg.get("ckpt_path"))
    run.check_resume_settings(cfg, resuming=ckpt is not None)
    loggers = build_loggers(cfg.get("logger"), cfg.task_name, run_dir, resume=ckpt is not None)
    log_config(loggers, cfg)

    prompts, analysis = prepare_prompts(cfg, run)
    log_table(loggers, "data/split_counts", analysis["counts"])
    loaded = organism.load(cfg.model)
    # building an organism (first use) draws random numbers: re-seed, so a cold cache gives the SAE a warm one gives
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("behavior") is not None:
        baseline_behavior(loaded, prompts, cfg.behavior, run, loggers)
    store_dir, collect, plan = activation_store(cfg, loaded, prompts)
    for hook in plan.hooks:  # a bad SAE config fails now, not after collection
        SAEConfig.from_cfg(cfg.sae, hook_width(loaded.model, hook))
    log.info("activation store: %s", store_dir)
    dm = activations_config.datamodule(cfg.activations, store_dir, plan.hooks, cfg.seed, collect)
    dm.prepare_data()
    dm.setup("fit")
    dm.collect_fn = None  # collected: the LM is not needed to train the SAEs
    model_name, n_layers = loaded.name, loaded.n_layers
    del loaded, collect

    module = SAELightningModule(cfg.sae, plan.hooks, dm.store.d_in, dm.categories, total_steps=cfg.trainer.max_steps)
    if ckpt is None:
        module.init_from_sample(dm.sample_rows(activations_config.init_rows(cfg.activations)))
    checkpoint = ModelCheckpoint(dirpath=run.checkpoints, filename="step{step}", save_last=True,
                                 every_n_train_steps=cfg.checkpoint_every_n_steps, save_top_k=1,
                                 monitor=MONITOR, mode="max", auto_insert_metric_name=False)
    callbacks = [checkpoint]
    if cfg.trainer.get("enable_progress_bar", True):
        # tqdm's bar, never Lightning's rich one, whose "Epoch 3/-2" reads max_epochs=-1 (training is step-based)
        callbacks.append(TQDMProgressBar())
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if MONITOR not in metrics:
        trainer.validate(module, datamodule=dm, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if trainer.is_global_zero:
        meta = {"activation_store": str(store_dir), "store_fingerprint": stable_hash(dm.store.manifest["fingerprint"]),
                "prompts_hash": prompts.content_hash(), "n_layers": n_layers}
        sae_dirs = module.export_saelens(run.saes, model_name=model_name, extra_metadata=meta)
        manifest = {"model": model_name, "hooks": plan.hooks, "sae_dirs": {h: str(p) for h, p in sae_dirs.items()},
                    "metrics": metrics, "config_hash": stable_hash(OmegaConf.to_container(cfg, resolve=True)), **meta}
        run.write_manifest(manifest)
        log_artifact(loggers, **run.artifact(manifest))
        print(f"SAEs: {run.saes}")
        for lg in loggers:
            print(f"{type(lg).__name__}: {getattr(lg, 'save_dir', None) or getattr(lg, 'log_dir', '')}")
        print(f"{MONITOR} = {metrics[MONITOR]:.4f}")
    return optimized_metric(cfg, metrics)
