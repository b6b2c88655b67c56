import pytest

from refusal.data import PromptRecord, PromptSet
from refusal.errors import ConfigError


def rec(i, category="violence", label="toxic", split="train"):
    return PromptRecord(f"s:{i}", f"prompt {i}", category, label, "s", split)


def test_record_is_frozen_and_validated():
    r = rec(0)
    with pytest.raises(AttributeError):
        r.label = "safe"
    with pytest.raises(ConfigError, match="'harmless'"):
        rec(1, label="harmless")
    with pytest.raises(ConfigError, match="'dev'"):
        rec(1, split="dev")
    with pytest.raises(ConfigError, match="empty prompt"):
        PromptRecord("s:2", "   ", "violence", "toxic", "s")
    assert PromptRecord("s:3", "p", "violence", "toxic", "s").split == ""


def test_duplicate_ids_rejected():
    with pytest.raises(ConfigError, match="'s:0'"):
        PromptSet([rec(0), rec(0, split="val")])


def test_filter_and_categories():
    ps = PromptSet([rec(0), rec(1, "cbrn", split="val"), rec(2, "benign", "safe"), rec(3, "cbrn", "hard", "test")])
    assert len(ps) == 4 and [r.id for r in ps] == ["s:0", "s:1", "s:2", "s:3"]
    assert [r.id for r in ps.filter(split="train")] == ["s:0", "s:2"]
    assert [r.id for r in ps.filter(label=["toxic", "hard"], category="cbrn")] == ["s:1", "s:3"]
    assert ps.categories() == ["benign", "cbrn", "violence"]
    assert ps.categories(label="toxic") == ["cbrn", "violence"]
    with pytest.raises(ConfigError, match="'unsafe'"):
        ps.filter(label="unsafe")


def test_hash_and_jsonl_roundtrip(tmp_path):
    ps = PromptSet([rec(0), PromptRecord("s:1", "ünïcode, \"quotes\"\nnewline", "benign", "safe", "s", "val")])
    path = tmp_path / "set.jsonl"
    ps.to_jsonl(path)
    back = PromptSet.from_jsonl(path)
    assert back == ps and back.content_hash() == ps.content_hash()
    other = PromptSet([rec(0), PromptRecord("s:1", "changed", "benign", "safe", "s", "val")])
    assert other.content_hash() != ps.content_hash()
    with pytest.raises(ConfigError, match="missing.jsonl"):
        PromptSet.from_jsonl(tmp_path / "missing.jsonl")
