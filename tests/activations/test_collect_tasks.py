"""A collection split over N tasks fills one store identical to a one-process collection; until the last task is
done the store is not complete."""
from pathlib import Path

import pytest

from refusal.activations import ActivationStore, CollectionPlan, collect_activations
from refusal.activations.collect_tasks import CollectTask
from refusal.behavior.score import resolve_refusal_tokens
from refusal.errors import ConfigError

HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]


def _collect(tiny, prompts, path, task=CollectTask()):
    plan = CollectionPlan(hooks=HOOKS, batch_size=6, shard_prompts=7)  # 42 prompts: 6 shards
    return collect_activations(tiny, prompts, plan, path, resolve_refusal_tokens(tiny.tokenizer), progress=False, task=task)


def _files(store_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store_dir.iterdir())}


def test_tasks_in_any_order_give_the_one_process_store(tiny, prompts, tmp_path):
    single = _collect(tiny, prompts, tmp_path / "single")
    assert single is not None and single.n_shards == 6
    split = tmp_path / "split"
    for index in (2, 0):
        assert _collect(tiny, prompts, split, CollectTask(index, 3)) is None
        with pytest.raises(ConfigError, match=r"incomplete \(4 of 6 shards\)" if index == 0 else "incomplete"):
            ActivationStore(split)
    store = _collect(tiny, prompts, split, CollectTask(1, 3))  # the last task completes the store
    assert store is not None and store.manifest["complete"]
    assert _files(split) == _files(tmp_path / "single")  # same shards, byte for byte, and the same manifest


def _shard_stats(store_dir: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(store_dir.glob("shard_*.safetensors"))}


def test_a_rerun_in_one_process_finishes_what_tasks_left(tiny, prompts, tmp_path):
    assert _collect(tiny, prompts, tmp_path / "s", CollectTask(0, 2)) is None
    first = _shard_stats(tmp_path / "s")
    assert len(first) == 3
    assert _collect(tiny, prompts, tmp_path / "s") is not None
    after = _shard_stats(tmp_path / "s")
    assert {k: after[k] for k in first} == first  # task 0's shards were kept, not collected again
    _collect(tiny, prompts, tmp_path / "ref")
    assert _files(tmp_path / "s") == _files(tmp_path / "ref")


def test_shard_ranges_cover_every_shard_once():
    for n_shards in (0, 1, 5, 6, 7):
        for count in (1, 2, 3, 8):
            ranges = [CollectTask(i, count).shard_range(n_shards) for i in range(count)]
            assert [i for r in ranges for i in r] == list(range(n_shards))


@pytest.mark.parametrize("environ, want", [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}, CollectTask(1, 3)),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2",
      "SLURM_ARRAY_TASK_STEP": "1", "RANK": "1", "WORLD_SIZE": "4"}, CollectTask(0, 2)),
    ({"RANK": "3", "WORLD_SIZE": "4"}, CollectTask(3, 4)),
])
def test_task_from_environment(environ, want):
    assert CollectTask.from_config("env", 0, environ) == want


@pytest.mark.parametrize("tasks, index, environ, match", [
    (0, 0, {}, "collect_tasks=0 .*int >= 1 or 'env'"),
    ("4", 0, {}, "collect_tasks='4'"),
    (2, 2, {}, r"collect_task_index=2 .*\[0, 1\]"),
    (2, -1, {}, "collect_task_index=-1"),
    ("env", 0, {}, "needs SLURM_ARRAY_TASK_ID .* RANK and WORLD_SIZE"),
    ("env", 0, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "2",
                "SLURM_ARRAY_TASK_STEP": "2"}, "consecutive .*step 2"),
    ("env", 0, {"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an int"),
])
def test_bad_task_settings_are_one_line_errors(tasks, index, environ, match):
    with pytest.raises(ConfigError, match=match) as e:
        CollectTask.from_config(tasks, index, environ)
    assert "\n" not in str(e.value)
