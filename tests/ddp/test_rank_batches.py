"""Under DDP each rank trains on its slice of the global batch a single process with the global batch size gets."""
import pytest
import torch

import refusal.activations.datamodule as datamodule
from refusal.activations import CollectionPlan, collect_activations
from refusal.activations.datamodule import ActivationDataModule
from refusal.behavior.score import resolve_refusal_tokens
from refusal.errors import ConfigError

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def store_dir(tiny, make_prompts, tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    collect_activations(tiny, make_prompts(), CollectionPlan(hooks=[HOOK], shard_prompts=10), d,
                        resolve_refusal_tokens(tiny.tokenizer), progress=False)
    return d


def _batches(store_dir, monkeypatch, rank, world, batch_size, samples=1000, epoch=0):
    monkeypatch.setattr(datamodule, "_dist_info", lambda: (rank, world))
    dm = ActivationDataModule(str(store_dir), [HOOK], batch_size=batch_size, samples_per_epoch=samples,
                              shards_in_memory=2, seed=4)
    dm.setup("fit")
    dm._epoch = lambda: epoch
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader.dataset)
    return batches


@pytest.mark.parametrize("epoch", [0, 3])
def test_rank_slices_concatenate_to_the_single_process_batches(store_dir, monkeypatch, epoch):
    single = _batches(store_dir, monkeypatch, 0, 1, 64, epoch=epoch)
    ranks = [_batches(store_dir, monkeypatch, r, 2, 32, epoch=epoch) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 1000 // 64  # full batches only: the rest is dropped
    for one, r0, r1 in zip(single, *ranks):
        assert len(r0["label"]) == len(r1["label"]) == 32
        assert torch.equal(one["acts"][HOOK], torch.cat([r0["acts"][HOOK], r1["acts"][HOOK]]))
        assert torch.equal(one["category"], torch.cat([r0["category"], r1["category"]]))
    assert not torch.equal(ranks[0][0]["acts"][HOOK], ranks[1][0]["acts"][HOOK])


def test_val_rows_split_across_ranks_once(store_dir, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setattr(datamodule, "_dist_info", lambda rank=rank: (rank, 2))
        dm = ActivationDataModule(str(store_dir), [HOOK], val_batch_size=7, seed=0)
        dm.setup("fit")
        seen.append(torch.cat([b["acts"][HOOK] for b in dm.val_dataloader()]))
    monkeypatch.setattr(datamodule, "_dist_info", lambda: (0, 1))
    dm = ActivationDataModule(str(store_dir), [HOOK], val_batch_size=7, seed=0)
    dm.setup("fit")
    every = torch.cat([b["acts"][HOOK] for b in dm.val_dataloader()])
    assert len(seen[0]) + len(seen[1]) == len(every)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(torch.cat(seen)) == key(every)


def test_fewer_draws_than_one_global_batch_is_an_error(store_dir, monkeypatch):
    with pytest.raises(ConfigError, match="samples_per_epoch=100 .*64 x 2 ranks"):
        _batches(store_dir, monkeypatch, 0, 2, 64, samples=100)
