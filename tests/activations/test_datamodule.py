import numpy as np
import pytest
import torch

from refusal.activations import CollectionPlan, collect_activations
from refusal.activations.datamodule import ActivationDataModule
from refusal.behavior.score import refusal_token_ids
from refusal.errors import ConfigError

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture
def store_dir(tiny, prompts, tmp_path):
    plan = CollectionPlan(hooks=HOOKS, batch_size=8, shard_prompts=10)
    collect_activations(tiny, prompts, plan, tmp_path / "s", refusal_token_ids(tiny.tokenizer), progress=False)
    return tmp_path / "s"


def test_train_batches_stream_with_target_proportions(store_dir):
    dm = ActivationDataModule(str(store_dir), HOOKS, batch_size=64, samples_per_epoch=6400, shards_in_memory=2, seed=1)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["label"]) for b in batches) == 6400
    assert all(set(b["acts"]) == set(HOOKS) and b["acts"][HOOKS[0]].shape[1] == 64 for b in batches)
    labels = torch.cat([b["label"] for b in batches])
    assert (labels == 0).float().mean() == pytest.approx(0.5, abs=0.03)
    cats = torch.cat([b["category"] for b in batches])[labels == 0]
    shares = torch.bincount(cats).float() / len(cats)
    np.testing.assert_allclose(shares[shares > 0].numpy(), 1 / 3, atol=0.04)
    again = list(dm.train_dataloader())
    assert torch.equal(batches[0]["acts"][HOOKS[0]], again[0]["acts"][HOOKS[0]])


def test_val_rows_each_once(store_dir):
    dm = ActivationDataModule(str(store_dir), HOOKS, batch_size=64, val_batch_size=50, seed=0)
    dm.setup("fit")
    n = sum(len(b["label"]) for b in dm.val_dataloader())
    assert n == len(dm.val_rows) > 0


def test_sample_rows_and_missing_hook(store_dir):
    dm = ActivationDataModule(str(store_dir), HOOKS, seed=0)
    dm.setup("fit")
    s = dm.sample_rows(100)
    assert s[HOOKS[0]].shape == (100, 64)
    bad = ActivationDataModule(str(store_dir), ["blocks.3.hook_resid_post"])
    with pytest.raises(ConfigError, match="blocks.3.hook_resid_post"):
        bad.setup("fit")
