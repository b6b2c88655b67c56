"""A damaged shard is collected again while collecting and named in a one-line error while only reading; the
manifest records every shard's size and sha256; stores written without those records still load."""
import hashlib
import logging
from pathlib import Path

import pytest
import torch

import refusal.activations.collector as collector
from refusal.activations import ActivationStore, CollectionPlan, collect_activations
from refusal.behavior.score import resolve_refusal_tokens
from refusal.errors import ConfigError
from refusal.utils.io import read_json, write_json

HOOKS = ["blocks.1.hook_resid_post"]


def _collect(tiny, prompts, path):
    plan = CollectionPlan(hooks=HOOKS, batch_size=8, shard_prompts=10)  # 42 prompts: 5 shards
    return collect_activations(tiny, prompts, plan, path, resolve_refusal_tokens(tiny.tokenizer), progress=False)


def _stats(store_dir: Path) -> dict[str, tuple[int, int]]:
    """Inode and mtime of every shard: a shard written again gets new ones."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(store_dir.glob("shard_*.safetensors"))}


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _flip_last_byte(path: Path) -> None:
    """Same size, same header, different data: only the hash can tell."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def ref(tiny, prompts, tmp_path) -> ActivationStore:
    return _collect(tiny, prompts, tmp_path / "ref")


def test_manifest_records_size_and_sha256_of_every_shard(ref):
    assert ref.n_shards == 5
    for entry in ref.manifest["shards"]:
        data = (ref.dir / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in ref.dir.glob("*.json")) == ["manifest.json"]  # no side records left


def test_truncated_shard_is_a_one_line_error_when_reading(ref):
    _truncate(ref.dir / "shard_00003.safetensors")
    with pytest.raises(ConfigError, match=r"shard_00003\.safetensors is damaged \(100 bytes, the manifest says") as e:
        ActivationStore(ref.dir)
    assert "\n" not in str(e.value) and "collect it again" in str(e.value)


def test_shard_damaged_after_opening_is_named_when_it_fails_to_load(ref):
    store = ActivationStore(ref.dir)
    _truncate(store.shard_path(2))
    with pytest.raises(ConfigError, match=r"shard_00002\.safetensors is damaged") as e:
        store.load_hook(HOOKS[0])
    assert "\n" not in str(e.value)


def test_truncated_shard_is_collected_again_and_the_others_kept(tiny, prompts, tmp_path, ref, caplog):
    store_dir = _collect(tiny, prompts, tmp_path / "s").dir
    _truncate(store_dir / "shard_00001.safetensors")
    before = _stats(store_dir)
    with caplog.at_level(logging.WARNING, logger=collector.__name__):
        again = _collect(tiny, prompts, store_dir)
    assert any("shard_00001.safetensors is damaged" in r.getMessage() for r in caplog.records)
    after = _stats(store_dir)
    assert after["shard_00001.safetensors"] != before["shard_00001.safetensors"]
    assert {k: v for k, v in after.items() if k != "shard_00001.safetensors"} == \
        {k: v for k, v in before.items() if k != "shard_00001.safetensors"}  # nothing complete is lost
    assert again.manifest == ref.manifest
    for name in before:
        assert (store_dir / name).read_bytes() == (ref.dir / name).read_bytes(), name


def test_interrupted_collection_recollects_a_shard_whose_hash_differs(tiny, prompts, tmp_path, ref, monkeypatch):
    real_write, written = collector.write_shard, []

    def dying_write(path, tensors):
        if len(written) == 3:
            raise KeyboardInterrupt("killed")
        written.append(path)
        return real_write(path, tensors)

    monkeypatch.setattr(collector, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _collect(tiny, prompts, tmp_path / "s")
    monkeypatch.setattr(collector, "write_shard", real_write)
    store_dir = tmp_path / "s"
    _flip_last_byte(store_dir / "shard_00000.safetensors")
    before = _stats(store_dir)
    again = _collect(tiny, prompts, store_dir)
    after = _stats(store_dir)
    assert after["shard_00000.safetensors"] != before["shard_00000.safetensors"]
    assert after["shard_00001.safetensors"] == before["shard_00001.safetensors"]
    assert after["shard_00002.safetensors"] == before["shard_00002.safetensors"]
    assert torch.equal(again.load_hook(HOOKS[0])[0], ref.load_hook(HOOKS[0])[0])
    assert again.manifest == ref.manifest


def test_store_written_without_records_still_loads_and_is_checked_by_its_headers(ref):
    manifest = read_json(ref.dir / "manifest.json")
    for entry in manifest["shards"]:
        del entry["bytes"], entry["sha256"]
    write_json(ref.dir / "manifest.json", manifest)
    acts = ActivationStore(ref.dir).load_hook(HOOKS[0])[0]
    assert torch.equal(acts, ref.load_hook(HOOKS[0])[0])
    _truncate(ref.dir / "shard_00004.safetensors", keep=4)
    with pytest.raises(ConfigError, match=r"shard_00004\.safetensors is damaged \(4 bytes, its header is cut off\)"):
        ActivationStore(ref.dir)
