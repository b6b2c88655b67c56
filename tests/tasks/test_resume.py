"""A training run killed mid-epoch and resumed from last.ckpt ends with the same SAE as an uninterrupted run."""
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import OmegaConf

from refusal.activations import CollectionPlan, collect_activations
from refusal.activations.datamodule import ActivationDataModule
from refusal.behavior.score import resolve_refusal_tokens
from refusal.sae.module import SAELightningModule

HOOK = "blocks.1.hook_resid_post"
STEPS = 12


class Killed(Exception):
    pass


class KillAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Killed


@pytest.fixture(scope="module")
def store(tiny, make_prompts, tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    collect_activations(tiny, make_prompts(), CollectionPlan(hooks=[HOOK], shard_prompts=12), d,
                        resolve_refusal_tokens(tiny.tokenizer), progress=False)
    return d


def _fit(store, ckpt_dir, callbacks=(), ckpt_path=None):
    L.seed_everything(0, verbose=False)
    sae_cfg = OmegaConf.load("conf/sae/topk.yaml")
    del sae_cfg["defaults"]  # the schema line
    sae_cfg.expansion_factor = 2
    dm = ActivationDataModule(str(store), [HOOK], batch_size=32, samples_per_epoch=32 * 5, shards_in_memory=1, seed=0)
    dm.setup("fit")
    module = SAELightningModule(sae_cfg, [HOOK], 64, dm.categories, total_steps=STEPS)
    if ckpt_path is None:
        module.init_from_sample(dm.sample_rows(256))
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=[ckpt, *callbacks])
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except Killed:
        return None
    return module


def test_resume_mid_epoch_matches_uninterrupted(store, tmp_path):
    ref = _fit(store, tmp_path / "ref")
    assert _fit(store, tmp_path / "run", callbacks=[KillAt(7)]) is None  # killed inside epoch 1 (5 batches/epoch)
    resumed = _fit(store, tmp_path / "run", ckpt_path=str(tmp_path / "run" / "last.ckpt"))
    for name, p in ref.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
