"""The feature-density histogram: per-latent firing frequency over the validation tokens (exact on known
batches), logged at validation end as a W&B histogram of log10 frequency per hook (read back from the offline
run's records)."""
from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

import refusal.sae.module as sae_module
from refusal.logger.offline import finished_records
from refusal.sae.density import LOG10_EPS, FiringCounts, log10_density
from refusal.sae.module import SAELightningModule

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
D_IN = 8


def test_frequency_of_known_batches():
    m = FiringCounts(4)
    m.update(torch.tensor([2, 0, 1, 4]), 4)  # latent 3 fires on every token of the batch, latent 1 never
    m.update(torch.tensor([0, 0, 1, 2]), 4)
    freq = m.compute()
    assert freq.tolist() == [2 / 8, 0.0, 2 / 8, 6 / 8]
    assert log10_density(freq).tolist() == pytest.approx([np.log10(0.25), -10.0, np.log10(0.25), np.log10(0.75)])
    m.reset()
    m.update(torch.tensor([1, 1, 0, 0]), 2)
    assert m.compute().tolist() == [0.5, 0.5, 0.0, 0.0]  # a new epoch starts from zero


def _batches(n_batches: int, rows: int):
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n_batches):
        x = torch.randn(rows, D_IN, generator=g) * 2 + 0.5
        out.append({"acts": {HOOKS[0]: x, HOOKS[1]: -3 * x}, "category": torch.zeros(rows, dtype=torch.long),
                    "label": torch.zeros(rows, dtype=torch.long)})
    return out


def _histograms(run_dir) -> dict[str, dict]:
    """The histograms logged, from the offline run's history records ({key: {"_type", "bins", "values"}}; W&B
    writes each field as an item with nested key [key, field])."""
    out: dict[str, dict] = {}
    for rec in finished_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            for item in rec.history.item:
                if len(item.nested_key) == 2:
                    out.setdefault(item.nested_key[0], {})[item.nested_key[1]] = json.loads(item.value_json)
    return {k: v for k, v in out.items() if v.get("_type") == "histogram"}


@pytest.mark.parametrize("arch,kernel", [("relu_l1", "dense"), ("topk", "sparse")])
def test_validation_end_logs_log10_density_per_hook(arch, kernel, make_cfg, tmp_path, monkeypatch):
    torch.manual_seed(0)
    sizes = {"k": 3, "k_percent": None, "kernel": kernel} if arch == "topk" else {}
    module = SAELightningModule(make_cfg(arch, expansion_factor=4, **sizes), HOOKS, D_IN, ["c"], total_steps=10)
    with torch.no_grad():
        for sae in module.saes.values():
            sae.b_enc.normal_(0, 0.5)
    batches = _batches(3, 32)
    seen = []
    real = sae_module.log_feature_density
    monkeypatch.setattr(sae_module, "log_feature_density", lambda lgs, f, step: (seen.append(f), real(lgs, f, step)))
    logger = WandbLogger(save_dir=str(tmp_path), mode="offline", project="t")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    try:
        trainer.validate(module, DataLoader(batches, batch_size=None), verbose=False)
    finally:
        wandb.finish()

    (freqs,) = seen
    eval_module = module.eval()
    for hook in HOOKS:
        x = torch.cat([b["acts"][hook] for b in batches])
        with torch.no_grad():
            expected = (eval_module.sae(hook).encode(x) > 0).double().mean(0)
        assert 0 < expected.mean() < 1  # latents fire on some tokens, not all
        torch.testing.assert_close(freqs[hook], expected, rtol=0, atol=1e-12)

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    hists = _histograms(run_dir)
    assert set(hists) == {f"val/{h}/feature_density" for h in HOOKS}
    for hook in HOOKS:
        counts, edges = np.histogram(np.log10(freqs[hook].numpy() + LOG10_EPS), bins=64)
        h = hists[f"val/{hook}/feature_density"]
        assert h["values"] == counts.tolist() and sum(h["values"]) == module.cfg.d_sae
        np.testing.assert_allclose(h["bins"], edges, rtol=1e-6)
