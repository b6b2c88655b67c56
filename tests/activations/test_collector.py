import pytest
import torch

import refusal.activations.collector as collector
from refusal.activations import ActivationStore, CollectionPlan, collect_activations
from refusal.behavior.score import refusal_score, resolve_refusal_tokens
from refusal.errors import ConfigError
from refusal.model.chat import ChatFormatter

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


def _collect(tiny, prompts, path, **kw):
    plan = CollectionPlan(hooks=kw.pop("hooks", HOOKS), batch_size=5, shard_prompts=16, **kw)
    return collect_activations(tiny, prompts, plan, path, resolve_refusal_tokens(tiny.tokenizer), progress=False)


@pytest.mark.parametrize("positions", ["all", "last", "post_instruction", "prompt_mean"])
def test_store_rows_equal_hidden_states(tiny, prompts, tmp_path, positions):
    store = _collect(tiny, prompts, tmp_path / "s", positions=positions)
    fmt = ChatFormatter(tiny.tokenizer)
    acts, meta = store.load_hook("blocks.2.hook_resid_post")
    assert acts.shape[1] == 64 and len(acts) == len(meta["prompt_index"])
    for pi in [0, 7, len(prompts) - 1]:
        rec = store.prompts[pi]
        text = next(r.prompt for r in prompts if r.id == rec["id"])
        enc = fmt.encode([text])
        with torch.no_grad():
            out = tiny.model(**enc.model_inputs(), output_hidden_states=True)
        hs = out.hidden_states[3][0]
        rows = meta["prompt_index"] == pi
        if positions == "prompt_mean":
            want = hs[int(enc.content_start[0]):int(enc.content_end[0])].mean(0, keepdim=True)
        else:
            want = hs[meta["position"][rows].long()]
            assert (meta["from_end"][rows] == enc.seq_len - meta["position"][rows]).all()
        # alone vs. inside a left-padded batch: same positions, float-level agreement
        torch.testing.assert_close(acts[rows], want, rtol=1e-4, atol=1e-5)
        score = refusal_score(out.logits[0, -1], resolve_refusal_tokens(tiny.tokenizer))
        torch.testing.assert_close(store.per_prompt["refusal_score"][pi], score, rtol=1e-4, atol=1e-6)


def test_early_stop_store_equals_full_forward_store(tiny, prompts, tmp_path):
    a = _collect(tiny, prompts, tmp_path / "a", stop_early=True, record_refusal_score=False)
    b = _collect(tiny, prompts, tmp_path / "b", stop_early=False, record_refusal_score=False)
    c = _collect(tiny, prompts, tmp_path / "c", stop_early=True, record_refusal_score=True)
    for h in HOOKS:
        assert torch.equal(a.load_hook(h)[0], b.load_hook(h)[0])
        assert torch.equal(a.load_hook(h)[0], c.load_hook(h)[0])
    assert (c.per_prompt["refusal_score"] != 0).all()


def test_killed_collection_resumes_to_identical_store(tiny, prompts, tmp_path, monkeypatch):
    ref = _collect(tiny, prompts, tmp_path / "ref")
    real_write = collector.write_shard
    written = []

    def dying_write(path, tensors):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        record = real_write(path, tensors)
        written.append(path)
        return record

    monkeypatch.setattr(collector, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _collect(tiny, prompts, tmp_path / "run")
    with pytest.raises(ConfigError, match="incomplete"):
        ActivationStore(tmp_path / "run")
    assert not list((tmp_path / "run").glob(".*tmp"))  # nothing half-written left behind
    monkeypatch.setattr(collector, "write_shard", real_write)
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in written}
    again = _collect(tiny, prompts, tmp_path / "run")
    assert again.n_shards == ref.n_shards > 2
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in written} == kept  # finished shards not rewritten
    for h in HOOKS:
        assert torch.equal(again.load_hook(h)[0], ref.load_hook(h)[0])
    assert torch.equal(again.per_prompt["refusal_score"], ref.per_prompt["refusal_score"])


def test_manifest_mismatch_is_clear_error(tiny, prompts, tmp_path):
    _collect(tiny, prompts, tmp_path / "s", positions="all")
    with pytest.raises(ConfigError, match="positions") as e:
        _collect(tiny, prompts, tmp_path / "s", positions="last")
    assert "\n" not in str(e.value)


def test_store_is_seeded_mix_of_prompts(tiny, prompts, tmp_path):
    s0 = _collect(tiny, prompts, tmp_path / "a", seed=0)
    s0b = _collect(tiny, prompts, tmp_path / "b", seed=0)
    s1 = _collect(tiny, prompts, tmp_path / "c", seed=1)
    assert [p["id"] for p in s0.prompts] == [p["id"] for p in s0b.prompts]
    assert [p["id"] for p in s0.prompts] != [p["id"] for p in s1.prompts]
    first_shard = {p["label"] for p in s0.prompts[:16]}
    assert first_shard == {"toxic", "safe", "hard"}
