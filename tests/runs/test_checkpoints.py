"""Which checkpoint a resume starts from when ``last.ckpt`` is damaged."""
import logging

import pytest
import torch

from refusal.errors import ConfigError
from refusal.runs.checkpoints import is_intact, resume_checkpoint


def _save(path, step):
    torch.save({"global_step": step, "state_dict": {"w": torch.full((64,), float(step))}}, path)
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_intact_last_is_resumed(tmp_path, caplog):
    _save(tmp_path / "step8.ckpt", 8)
    _save(tmp_path / "last.ckpt", 12)
    with caplog.at_level(logging.INFO, logger="refusal.runs.checkpoints"):
        assert resume_checkpoint("last", tmp_path) == str(tmp_path / "last.ckpt")
    assert f"resuming from {tmp_path / 'last.ckpt'} (step 12)" in caplog.text


def test_damaged_last_falls_back_to_the_latest_intact_step(tmp_path, caplog):
    for step in (4, 12, 8):
        _save(tmp_path / f"step{step}.ckpt", step)
    _truncate(_save(tmp_path / "step12.ckpt", 12))  # damaged too: passed over
    _truncate(_save(tmp_path / "last.ckpt", 16))
    with caplog.at_level(logging.INFO, logger="refusal.runs.checkpoints"):
        assert resume_checkpoint("last", tmp_path) == str(tmp_path / "step8.ckpt")
    (record,) = caplog.records
    assert "last.ckpt is damaged: resuming from" in record.getMessage() and "(step 8)" in record.getMessage()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step12.ckpt", "step4.ckpt", "step8.ckpt"]


def test_nothing_intact_starts_fresh_as_without_checkpoint(tmp_path, caplog):
    assert resume_checkpoint("last", tmp_path) is None  # no last.ckpt: fresh, as before
    _truncate(_save(tmp_path / "last.ckpt", 4))
    with caplog.at_level(logging.INFO, logger="refusal.runs.checkpoints"):
        assert resume_checkpoint("last", tmp_path) is None
    assert "no other checkpoint" in caplog.text and "starts from step 0" in caplog.text
    assert (tmp_path / "last.ckpt").is_file()  # kept


@pytest.mark.parametrize("size", [0, 10, None])
def test_is_intact(tmp_path, size):
    path = _save(tmp_path / "a.ckpt", 1)
    if size is not None:
        path.write_bytes(path.read_bytes()[:size])
    assert is_intact(path) is (size is None)


def test_bit_flip_inside_is_damaged(tmp_path):
    path = _save(tmp_path / "a.ckpt", 1)
    data = bytearray(path.read_bytes())
    i = data.index(b"\x00\x00\x80?")  # a stored 1.0 float of the tensor
    data[i + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not is_intact(path)


def test_explicit_paths(tmp_path):
    assert resume_checkpoint(None, tmp_path) is None and resume_checkpoint("", tmp_path) is None
    good = _save(tmp_path / "good.ckpt", 3)
    assert resume_checkpoint(str(good), tmp_path) == str(good)
    with pytest.raises(ConfigError, match="does not exist"):
        resume_checkpoint(str(tmp_path / "none.ckpt"), tmp_path)
    _truncate(good)
    with pytest.raises(ConfigError, match="is damaged"):
        resume_checkpoint(str(good), tmp_path)
