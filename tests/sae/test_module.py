import csv

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from refusal.errors import ConfigError
from refusal.sae.io import load_saelens
from refusal.sae.module import SAELightningModule

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
CATEGORIES = ["hate", "privacy", "violence"]
D_IN = 48
ATOMS = F.normalize(torch.randn(64, D_IN, generator=torch.Generator().manual_seed(0)), dim=1)  # planted dictionary


def planted(n, seed, active=3):
    """x = sum of `active` random ATOMS with coefficients in [0.5, 1.5), plus a constant offset."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, len(ATOMS), generator=g).topk(active, dim=1).indices
    coef = 0.5 + torch.rand(n, active, generator=g)
    return (coef[..., None] * ATOMS[idx]).sum(1) + 0.3


class ActsDataset(Dataset):
    def __init__(self, acts, category, label):
        self.acts, self.category, self.label = acts, category, label

    def __len__(self):
        return len(self.category)

    def __getitem__(self, i):
        return {"acts": {h: a[i] for h, a in self.acts.items()}, "category": self.category[i], "label": self.label[i]}


def make_data(n, seed):
    x = planted(n, seed)
    g = torch.Generator().manual_seed(seed)
    acts = {HOOKS[0]: x, HOOKS[1]: 2.5 * x.flip(1)}  # second hook: another layout and scale
    return ActsDataset(acts, torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (n,), generator=g))


def trainer(tmp_path, steps, **kw):
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), log_every_n_steps=25,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, deterministic=True, **kw)


def test_recovers_planted_dictionary(tmp_path, make_cfg):
    L.seed_everything(0)
    train_ds = make_data(8192, seed=1)
    val_ds = make_data(2048, seed=2)
    cfg = make_cfg("topk", k=3, k_percent=None, expansion_factor=2, lr=5e-3, aux_k=16, dead_tokens_threshold=4096,
                   lr_warmup_steps=20, lr_decay_start=0.7, b_dec_init="geometric_median")
    module = SAELightningModule(cfg, HOOKS, d_in=D_IN, categories=CATEGORIES, total_steps=400)
    module.init_from_sample({h: train_ds.acts[h][:2048] for h in HOOKS})
    t = trainer(tmp_path, 400, gradient_clip_val=1.0)
    t.fit(module, DataLoader(train_ds, batch_size=256, shuffle=True), DataLoader(val_ds, batch_size=512))
    metrics = t.validate(module, DataLoader(val_ds, batch_size=512), verbose=False)[0]

    assert metrics["val/explained_variance"] >= 0.95
    for h in HOOKS:
        assert metrics[f"val/{h}/explained_variance"] >= 0.95
        assert metrics[f"val/{h}/l0"] <= 3.0
        for c in CATEGORIES:
            assert metrics[f"val/{h}/explained_variance/{c}"] >= 0.9
        W_dec = module.sae(h).W_dec.detach()
        assert torch.allclose(W_dec.norm(dim=1), torch.ones(len(W_dec)), atol=1e-5)
    for h, atoms in ((HOOKS[0], ATOMS), (HOOKS[1], ATOMS.flip(1))):
        best_cos = (F.normalize(module.sae(h).W_dec.detach(), dim=1) @ atoms.T).max(0).values
        assert (best_cos > 0.9).float().mean() >= 0.8, best_cos

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = {k for r in rows for k, v in r.items() if v}
    for name in ("mse", "explained_variance", "l0", "dead_fraction", "aux_loss"):
        assert f"train/{HOOKS[1]}/{name}" in logged
    assert "train/loss" in logged
    assert sum(1 for r in rows if r.get("train/loss")) == 400 // 25  # logged only every log_every_n_steps

    # export: raw activations in, same reconstruction as the trained module
    paths = module.export_saelens(tmp_path / "saes", model_name="tiny", extra_metadata={"data_hash": "abc"})
    assert sorted(paths) == sorted(HOOKS) and paths[HOOKS[1]].name == HOOKS[1]
    sae, scfg = load_saelens(paths[HOOKS[1]], d_in=D_IN)
    x = val_ds.acts[HOOKS[1]][:100]
    assert torch.allclose(sae(x), module.sae(HOOKS[1]).eval()(x), atol=1e-4)
    assert scfg["metadata"]["data_hash"] == "abc" and scfg["k"] == 3


def test_batchtopk_and_relu_l1_train_through_trainer(tmp_path, make_cfg):
    L.seed_everything(0)
    ds = make_data(2048, seed=3)
    for name, extra in (("batchtopk", dict(k=3, k_percent=None, aux_k=16)), ("relu_l1", dict(l1_coeff=1e-3))):
        cfg = make_cfg(name, expansion_factor=4, lr=3e-3, lr_warmup_steps=5, sparsity_warmup_steps=20, **extra) \
            if name == "relu_l1" else make_cfg(name, expansion_factor=4, lr=3e-3, lr_warmup_steps=5, **extra)
        module = SAELightningModule(cfg, HOOKS[:1], d_in=D_IN, categories=CATEGORIES, total_steps=60)
        module.init_from_sample({HOOKS[0]: ds.acts[HOOKS[0]]})
        t = trainer(tmp_path / name, 60)
        t.fit(module, DataLoader(ds, batch_size=256, shuffle=True))
        loss_name = "sparsity_loss" if name == "relu_l1" else "aux_loss"
        assert f"train/{HOOKS[0]}/{loss_name}" in t.logged_metrics
        m = t.validate(module, DataLoader(ds, batch_size=512), verbose=False)[0]
        assert m["val/explained_variance"] > 0.5, (name, m)
        if name == "batchtopk":
            assert (module.sae(HOOKS[0]).threshold > 0).all()


def test_bad_construction_raises(make_cfg):
    with pytest.raises(ConfigError):
        SAELightningModule(make_cfg(k=3, k_percent=0.1), HOOKS, D_IN, CATEGORIES, 10)
    with pytest.raises(ConfigError):
        SAELightningModule(make_cfg(), [], D_IN, CATEGORIES, 10)
    module = SAELightningModule(make_cfg(), HOOKS, D_IN, CATEGORIES, 10)
    with pytest.raises(ConfigError, match="expected"):
        module.init_from_sample({HOOKS[0]: torch.randn(10, D_IN)})
