"""One cache key, one set of bits: the key of a CPU build names MKL's mode when it is not the AVX2 branch (MKL refuses
that branch on non-Intel CPUs and runs AUTO in strict mode there, whose kernels depend on the CPU), and a build child
whose key differs from the one its parent waits for stops with the reason."""
from __future__ import annotations

import pytest

from refusal.organism import build, cache, portable
from refusal.organism.child import CHILD_FLAG, KEY_FLAG
from test_organism import organism_cfg


@pytest.mark.parametrize("mode,want", [
    ("avx2-strict", {}),  # every Intel CPU with AVX2: keys as they were
    ("auto-strict", {"mkl": "auto-strict", "cpu": "AuthenticAMD AVX512"}),
    ("compatible-strict", {"mkl": "compatible-strict"}),  # documented the same on every x86 CPU
    ("absent", {"mkl": "absent", "cpu": "AuthenticAMD AVX512"}),
])
def test_the_key_names_the_mode_and_where_it_matters_the_cpu(monkeypatch, mode, want):
    monkeypatch.setattr(portable, "build_mode", lambda: mode)
    monkeypatch.setattr(portable, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(portable.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert portable.build_numerics_key() == want


@pytest.mark.parametrize("vendor,capability,want", [
    ("GenuineIntel", "AVX512", "avx2-strict"), ("GenuineIntel", "AVX2", "avx2-strict"),
    ("GenuineIntel", "DEFAULT", "auto-strict"), ("AuthenticAMD", "AVX512", "auto-strict"),
    ("HygonGenuine", "AVX2", "auto-strict")])
def test_an_unpinned_parent_predicts_the_childs_mode_from_the_cpu(monkeypatch, vendor, capability, want):
    """MKL offers its AVX2 branch on Intel CPUs with AVX2 only (measured on an AMD EPYC: MKL_CBWR=AVX2,STRICT gives
    mode AUTO|STRICT there)."""
    if portable._mkl_service() is None:
        pytest.skip("torch without MKL: every build is 'absent'")
    monkeypatch.setattr(portable, "mkl_pinned", lambda: False)
    monkeypatch.setattr(portable, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(portable.torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert portable.build_mode() == want


def test_mkl_modes_are_named_by_mkl_service_constants():
    """mkl_service.h: AUTO 2, COMPATIBLE 3, AVX2 10, STRICT 0x10000, BRANCH_OFF 1 (not pinned)."""
    assert portable.MODES == {0x1000A: "avx2-strict", 0x10002: "auto-strict", 0x10003: "compatible-strict",
                              1: "unpinned"}
    assert portable.mkl_mode() in portable.PINNED_MODES  # the test process pinned itself (conftest.py)


def test_keys_differ_between_modes_and_the_avx2_key_is_unchanged(tmp_path, monkeypatch):
    cfg = organism_cfg(tmp_path)
    train, test = (cache.build_prompt_set(cfg.data).filter(split=s) for s in ("train", "test"))
    keys = {}
    for mode in ("avx2-strict", "auto-strict", "compatible-strict"):
        monkeypatch.setattr(portable, "build_mode", lambda mode=mode: mode)
        keys[mode], parts = cache.cache_key(cfg, "w", train, test)
        assert ("built_on" in parts) == (mode != "avx2-strict")
    assert len(set(keys.values())) == 3
    monkeypatch.setattr(cache, "build_kernels", lambda cfg: {})  # the key before the mode was part of it
    assert cache.cache_key(cfg, "w", train, test)[0] == keys["avx2-strict"]


def test_a_child_whose_key_differs_from_its_parents_stops_with_the_reason(tmp_path, monkeypatch):
    cfg = organism_cfg(tmp_path)
    monkeypatch.setenv(CHILD_FLAG, "1")
    monkeypatch.setenv(KEY_FLAG, "0123456789abcdef")
    with pytest.raises(RuntimeError, match="its parent expected 0123456789abcdef: MKL runs another mode"):
        build.ensure_built(cfg)
    assert not (tmp_path / "organisms").exists()  # nothing built
