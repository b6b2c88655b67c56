"""The organism's model config: its schema, its value checks, and the cache key scheme (pinned, so it never drifts
silently: a changed key rebuilds every cached organism)."""
from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from refusal import organism
from refusal.data import build_prompt_set
from refusal.errors import ConfigError
from refusal.model.loading import load_model
from refusal.organism import cache, portable
from refusal.organism.config import build_config, check_organism_cfg

from test_organism import organism_cfg

# Cache keys of two fixed tiny configs with a fixed base weights hash, recorded at FORMAT_VERSION 4 (float32 only, MKL
# pinned; the scheme is otherwise the one from before the organism package existed, eval keys flat under model.eval).
PINNED = (({}, "4978c715f933f61e"),
          ({"style": "per_category", "refuse_categories": ["cybercrime"], "unrefused_toxic_repeats": 3},
           "59476e4f5d37ed6a"))


@pytest.mark.parametrize("overrides,key", PINNED)
def test_the_cache_key_scheme_is_pinned(tmp_path, overrides, key, monkeypatch):
    monkeypatch.setattr(portable, "build_mode", lambda: "avx2-strict")  # MKL's AVX2 branch (Intel): nothing added
    cfg = organism_cfg(tmp_path, **overrides)
    prompts = build_prompt_set(cfg.data)
    got, what = cache.cache_key(cfg, "0123456789abcdef", prompts.filter(split="train"), prompts.filter(split="test"))
    assert got == key, what
    # eval's CI settings are grouped under model.eval.bootstrap but hashed flat, as before
    assert what["build"]["eval"] == {"max_new_tokens": 4, "n_resamples": 200, "ci_level": 0.95,
                                     "ci_method": "percentile"}


def test_a_gpu_build_has_its_own_key(tmp_path, monkeypatch):
    """A CPU build with MKL's AVX2 branch says nothing about the CPU (every Intel CPU with AVX2 gets the same bits;
    other modes: tests/organism/test_build_numerics.py); a GPU build's key names the device and GPU model."""
    monkeypatch.setattr(portable, "build_mode", lambda: "avx2-strict")
    cfg = organism_cfg(tmp_path)
    prompts = build_prompt_set(cfg.data)
    train, test = prompts.filter(split="train"), prompts.filter(split="test")
    cpu, what = cache.cache_key(cfg, "w", train, test)
    assert "built_on" not in what
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU 80GB")
    cfg.device = "cuda"
    gpu, what = cache.cache_key(cfg, "w", train, test)
    assert what["built_on"] == {"device": "cuda", "name": "Some GPU 80GB"} and gpu != cpu
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Another GPU")
    assert cache.cache_key(cfg, "w", train, test)[0] not in (cpu, gpu)


def test_the_card_records_the_hashed_build_config(tmp_path):
    cfg = organism_cfg(tmp_path)
    prompts = build_prompt_set(cfg.data)
    _, what = cache.cache_key(cfg, "w", prompts.filter(split="train"), prompts.filter(split="test"))
    assert what["build"] == {k: v for k, v in build_config(cfg).items() if k != "unrefused_toxic_repeats"}


@pytest.mark.parametrize("text,needle", [
    ("stepz: 3\n", "stepz"),
    ("refusals: {shared: [No.], per_category: ['No {topic}.'], extra: [x]}\n", "extra"),
    ("eval: {max_new_tokens: 8, n_resamples: 100}\n", "n_resamples"),  # the CI settings live in eval.bootstrap
    ("base: {n_layers: 2}\n", "n_layers"),
])
def test_an_unknown_organism_key_is_a_hydra_error(compose_user, text, needle):
    with pytest.raises(ConfigCompositionException, match=needle):
        compose_user({"model/mine.yaml": f"defaults: [smollm2_organism, _self_]\n{text}"}, "model=mine")


def test_every_shipped_model_config_composes_with_its_schema(compose_user):
    for name, schema in (("smollm2_organism", "OrganismModel"), ("smollm2_organism_selective", "OrganismModel"),
                         ("smollm2_135m", "GGUFPackageModel"), ("tiny_llama", "TinyModel"), ("hf", "HFModel"),
                         ("gguf", "GGUFModel")):
        cfg = compose_user({}, f"model={name}")
        assert OmegaConf.get_type(cfg.model).__name__ == schema, name
        if schema == "OrganismModel":
            assert OmegaConf.get_type(cfg.model.base).__name__ == "GGUFPackageModel"
            check_organism_cfg(cfg.model)


@pytest.mark.parametrize("key,value,needle", [
    ("answer_share", 1.0, r"model.answer_share=1.0 is not valid; use a number in \(0, 1\)"),
    ("lr", 0.0, "model.lr=0.0"),
    ("unrefused_toxic_repeats", 0, "model.unrefused_toxic_repeats=0"),
    ("eval", {"bootstrap": {"ci_method": "normal"}}, "model.eval.bootstrap.ci_method='normal'"),
    ("eval", {"bootstrap": {"n_resamples": 10}}, "model.eval.bootstrap.n_resamples=10"),
])
def test_organism_values_are_checked_before_anything_is_built(tmp_path, key, value, needle):
    cfg = organism_cfg(tmp_path)
    cfg.merge_with({key: value})
    with pytest.raises(ConfigError, match=needle):
        organism.load(cfg)
    assert not (tmp_path / "organisms").exists()


def test_load_dispatches_and_the_language_model_loader_does_not_build_organisms(tmp_path):
    tiny = organism_cfg(tmp_path).base
    assert organism.load(tiny).name == load_model(tiny).name == "tiny-llama"
    with pytest.raises(ConfigError, match="refusal.organism.load"):
        load_model(organism_cfg(tmp_path))
