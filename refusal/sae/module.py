"""SAELightningModule: one SparseAutoencoder per hook, trained together on activation batches.

Batches: ``{"acts": {hook: [B, d_in]}, "category": LongTensor[B], "label": LongTensor[B]}``.
Logged (``train/*`` only on the steps the Trainer writes logs, i.e. every ``log_every_n_steps``; no host sync
otherwise):
- ``train/loss`` and ``train/<hook>/{mse, explained_variance, l0, dead_fraction}`` plus ``aux_loss``
  (topk/batchtopk) or ``sparsity_loss`` (relu_l1); train explained variance is on the current batch.
- ``val/<hook>/{mse, explained_variance, l0, dead_fraction}``, ``val/<hook>/explained_variance/<category>``
  (categories with >= 2 val tokens) and ``val/explained_variance`` (mean over hooks; the sweep target).
- ``val/<hook>/feature_density``: a W&B histogram of log10 latent firing frequency over the val tokens (W&B only;
  ``refusal.sae.density``).
Explained variance on val = 1 − Σ‖x − x̂‖² / Σ‖x − E x‖² over the whole epoch (torchmetrics R2Score,
variance-weighted, float64 states). ``mse`` is per element in scaled units (see ``refusal.sae.loss``).
Gradient clipping: set the Trainer's ``gradient_clip_val``; it is applied after the decoder-gradient projection.
DDP: every rank gets an equal slice of the same global batch (``ActivationDataModule``); the losses, dead-latent
counters and AuxK normaliser are those of the global batch (``refusal.sae.ranks``), and the val metrics are
torchmetrics states summed over ranks, so a DDP run matches one process with the global batch size up to float
rounding. batchtopk is the exception: it keeps the top k x (per-rank batch) activations of each rank's slice.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, R2Score, SumMetric

from refusal.errors import ConfigError
from refusal.config import plain
from refusal.sae.config import SAEConfig
from refusal.sae.density import FiringCounts, log_feature_density
from refusal.sae.io import save_saelens
from refusal.sae.loss import batch_explained_variance, sae_loss
from refusal.sae.model import SparseAutoencoder
from refusal.sae.optim import build_optimizer

VAL_METRICS = ("mse", "l0", "dead_fraction")


def hook_key(hook: str) -> str:
    """ModuleDict-safe key for a hook name (dots are not allowed in module names)."""
    return hook.replace(".", "__")


def _r2() -> R2Score:
    return R2Score(multioutput="variance_weighted").set_dtype(torch.float64)


class SAELightningModule(L.LightningModule):
    def __init__(self, sae_cfg: Mapping[str, Any], hooks: list[str], d_in: int, categories: list[str],
                 total_steps: int):
        super().__init__()
        sae_cfg, hooks, categories = plain(sae_cfg), list(hooks), list(categories)
        if not hooks or len(set(hooks)) != len(hooks) or len({hook_key(h) for h in hooks}) != len(hooks):
            raise ConfigError(f"hooks={hooks!r} is not valid; give a non-empty list of distinct hook names")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ConfigError(f"total_steps={total_steps!r} is not valid; it must be a positive int")
        self.save_hyperparameters({"sae_cfg": sae_cfg, "hooks": hooks, "d_in": d_in, "categories": categories,
                                   "total_steps": total_steps})
        self.cfg = SAEConfig.from_cfg(sae_cfg, d_in)
        self.hooks, self.categories, self.total_steps = hooks, categories, total_steps
        self.keys = {h: hook_key(h) for h in hooks}
        self.saes = nn.ModuleDict({
            k: SparseAutoencoder(d_in, self.cfg.d_sae, self.cfg.architecture, k=self.cfg.k) for k in self.keys.values()})
        self.val_metrics = nn.ModuleDict({
            k: nn.ModuleDict({**{m: MeanMetric() for m in VAL_METRICS}, "explained_variance": _r2()})
            for k in self.keys.values()})
        self.val_category_ev = nn.ModuleDict({
            k: nn.ModuleList(_r2() for _ in categories) for k in self.keys.values()})
        self.val_category_count = nn.ModuleList(SumMetric() for _ in categories)
        self.val_firing = nn.ModuleDict({k: FiringCounts(self.cfg.d_sae) for k in self.keys.values()})

    # ---- setup / export -------------------------------------------------------------------------------------
    def init_from_sample(self, sample: Mapping[str, Tensor]) -> None:
        """Set each SAE's input_scale and b_dec from ``{hook: Tensor[N, d_in]}`` (call before the first fit)."""
        if set(sample) != set(self.hooks):
            raise ConfigError(f"init sample has hooks {sorted(sample)}; expected {sorted(self.hooks)}")
        for hook, key in self.keys.items():
            self.saes[key].init_from_sample(sample[hook], self.cfg.b_dec_init)

    def sae(self, hook: str) -> SparseAutoencoder:
        return self.saes[self.keys[hook]]

    def export_saelens(self, out_dir: str | os.PathLike, model_name: str,
                       extra_metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Write one SAELens dir per hook at ``out_dir/<hook>/`` (input scaling folded in) -> {hook: path}."""
        return {hook: save_saelens(self.saes[key], Path(out_dir) / hook, hook_name=hook, model_name=model_name,
                                   metadata=dict(extra_metadata or {}))
                for hook, key in self.keys.items()}

    # ---- training ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt, sched = build_optimizer(self.saes.parameters(), self.cfg, self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def _log_this_step(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return False
        return trainer._logger_connector.should_update_logs  # the Trainer's own log_every_n_steps decision

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        log_now = self._log_this_step()
        total = None
        logs: dict[str, Tensor] = {}
        for hook, key in self.keys.items():
            sae = self.saes[key]
            t = sae_loss(sae, batch["acts"][hook], self.cfg, self.global_step)
            total = t.loss if total is None else total + t.loss
            if log_now:
                with torch.no_grad():
                    logs[f"train/{hook}/mse"] = t.mse.detach()
                    logs[f"train/{hook}/explained_variance"] = batch_explained_variance(t.x_s, t.x_hat_s)
                    logs[f"train/{hook}/l0"] = t.l0.mean()
                    logs[f"train/{hook}/dead_fraction"] = sae.dead_mask(self.cfg.dead_tokens_threshold).float().mean()
                    if self.cfg.architecture == "relu_l1":
                        logs[f"train/{hook}/sparsity_loss"] = t.sparsity.detach()
                    else:
                        logs[f"train/{hook}/aux_loss"] = t.aux.detach()
        if log_now:
            logs["train/loss"] = total.detach()
            # under DDP: the mean over ranks (equal batch sizes), i.e. the global batch's value for every
            # per-token mean; train explained_variance becomes the mean of the ranks' batch estimates
            self.log_dict(logs, on_step=True, on_epoch=False, batch_size=t.x_s.shape[0], sync_dist=True)
        return total

    def on_before_optimizer_step(self, optimizer) -> None:
        for sae in self.saes.values():
            sae.remove_parallel_decoder_grad()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        for sae in self.saes.values():
            sae.normalize_decoder()

    # ---- validation ----------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        cat = batch["category"]
        n = cat.shape[0]
        groups = None
        if self.categories:
            counts = torch.bincount(cat, minlength=len(self.categories))
            if counts.shape[0] > len(self.categories):
                raise ConfigError(f"category index {int(cat.max())} out of range for {len(self.categories)} categories")
            counts = counts.tolist()
            order = torch.argsort(cat, stable=True)
            groups = list(zip(range(len(counts)), counts, torch.split(order, counts)))
            for ci, c, _ in groups:
                self.val_category_count[ci].update(float(c))
        for hook, key in self.keys.items():
            sae = self.saes[key]
            t = sae_loss(sae, batch["acts"][hook], self.cfg, self.global_step)
            m = self.val_metrics[key]
            x_s, x_hat = t.x_s.double(), t.x_hat_s.double()
            m["mse"].update((t.x_hat_s - t.x_s).pow(2).mean(-1))
            m["l0"].update(t.l0)
            m["dead_fraction"].update(sae.dead_mask(self.cfg.dead_tokens_threshold).float().mean())
            m["explained_variance"].update(x_hat, x_s)
            self.val_firing[key].update(t.counts, n)
            for name, metric in m.items():
                self.log(f"val/{hook}/{name}", metric, on_step=False, on_epoch=True, batch_size=n)
            for ci, c, idx in groups or []:
                if c:
                    self.val_category_ev[key][ci].update(x_hat[idx], x_s[idx])

    def on_validation_epoch_end(self) -> None:
        # compute() syncs across processes; every rank takes the same branches because the counts are synced.
        counts = [int(m.compute()) for m in self.val_category_count]
        evs = []
        for hook, key in self.keys.items():
            evs.append(self.val_metrics[key]["explained_variance"].compute())
            for ci, name in enumerate(self.categories):
                if counts[ci] >= 2:
                    self.log(f"val/{hook}/explained_variance/{name}", self.val_category_ev[key][ci].compute().float(),
                             sync_dist=True)  # already synced by compute(); this only silences Lightning's warning
                self.val_category_ev[key][ci].reset()
        for m in self.val_category_count:
            m.reset()
        self.log("val/explained_variance", torch.stack(evs).float().mean(), sync_dist=True)
        freqs = {hook: self.val_firing[key].compute() for hook, key in self.keys.items()}  # synced over ranks
        for metric in self.val_firing.values():
            metric.reset()
        if self._trainer is not None and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            log_feature_density(self.loggers, freqs, self.global_step)
