import numpy as np
import pytest
import torch

from refusal.activations import CollectionPlan, collect_activations
from refusal.activations.datamodule import ActivationDataModule
from refusal.behavior.score import resolve_refusal_tokens
from refusal.data import PromptSet
from refusal.errors import ConfigError

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


@pytest.fixture
def store_dir(tiny, prompts, tmp_path):
    plan = CollectionPlan(hooks=HOOKS, batch_size=8, shard_prompts=10)
    collect_activations(tiny, prompts, plan, tmp_path / "s", resolve_refusal_tokens(tiny.tokenizer), progress=False)
    return tmp_path / "s"


TOXIC_PER_CATEGORY = {"cyber": 12, "violence": 6, "fraud": 3}  # unequal, so equal shares need the weights


@pytest.fixture(scope="module")
def unequal_store_dir(tiny, make_prompts, tmp_path_factory):
    def keep(r):
        return r.label != "toxic" or int(r.id.rsplit(":", 1)[1]) < TOXIC_PER_CATEGORY[r.category]

    prompts = PromptSet([r for r in make_prompts(n_per_cell=12) if keep(r)])
    d = tmp_path_factory.mktemp("unequal")
    plan = CollectionPlan(hooks=HOOKS, batch_size=8, shard_prompts=10)
    collect_activations(tiny, prompts, plan, d, resolve_refusal_tokens(tiny.tokenizer), progress=False)
    return d


@pytest.mark.parametrize("use_category_weights", [True, False])
def test_train_batches_stream_with_target_proportions(unequal_store_dir, use_category_weights):
    dm = ActivationDataModule(str(unequal_store_dir), HOOKS, batch_size=64, samples_per_epoch=6400, shards_in_memory=2,
                              seed=1, use_category_weights=use_category_weights)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["label"]) for b in batches) == 6400
    assert all(set(b["acts"]) == set(HOOKS) and b["acts"][HOOKS[0]].shape[1] == 64 for b in batches)
    labels = torch.cat([b["label"] for b in batches])
    assert (labels == 0).float().mean() == pytest.approx(0.5, abs=0.03)
    cats = torch.cat([b["category"] for b in batches])[labels == 0]
    shares = (torch.bincount(cats, minlength=len(dm.categories)).float() / len(cats)).numpy()
    toxic = [dm.categories.index(c) for c in sorted(TOXIC_PER_CATEGORY)]
    toxic_train = dm.index.label[dm.train_rows] == 0
    natural = np.bincount(dm.index.category[dm.train_rows][toxic_train], minlength=len(dm.categories))
    natural = natural / natural.sum()
    assert np.abs(natural[toxic] - 1 / 3).max() > 0.1  # the data alone would not give equal shares
    want = np.full(len(toxic), 1 / 3) if use_category_weights else natural[toxic]
    np.testing.assert_allclose(shares[toxic], want, atol=0.04)
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
