import pytest

from refusal.errors import ConfigError
from refusal.sae.config import SAEConfig
from refusal.sae.optim import LRSchedule


@pytest.mark.parametrize("name", ["topk", "batchtopk", "relu_l1"])
def test_shipped_configs_are_valid(make_cfg, name):
    cfg = SAEConfig.from_cfg(make_cfg(name), d_in=576)
    assert cfg.architecture == name and cfg.d_sae == 8 * 576
    if name != "relu_l1":
        assert cfg.k == round(0.01 * 8 * 576) == 46


def test_k_and_k_percent_both_set_raises(make_cfg):
    with pytest.raises(ConfigError, match="exactly one"):
        SAEConfig.from_cfg(make_cfg(k=10, k_percent=0.01), d_in=32)
    with pytest.raises(ConfigError, match="exactly one"):
        SAEConfig.from_cfg(make_cfg(k=None, k_percent=None), d_in=32)


def test_d_sae_and_expansion_factor_exactly_one(make_cfg):
    assert SAEConfig.from_cfg(make_cfg(d_sae=100, expansion_factor=None, k=5, k_percent=None), 32).d_sae == 100
    with pytest.raises(ConfigError, match="exactly one"):
        SAEConfig.from_cfg(make_cfg(d_sae=100), d_in=32)


def test_unknown_missing_and_bad_values_raise(make_cfg):
    with pytest.raises(ConfigError, match="unknown keys \\['l1_coeff'\\]"):
        SAEConfig.from_cfg(make_cfg(l1_coeff=1.0), d_in=32)
    cfg = make_cfg()
    del cfg["aux_k"]
    with pytest.raises(ConfigError, match="missing keys \\['aux_k'\\]"):
        SAEConfig.from_cfg(cfg, d_in=32)
    with pytest.raises(ConfigError, match="loaded"):
        SAEConfig.from_cfg(make_cfg(architecture="jumprelu"), d_in=32)
    with pytest.raises(ConfigError, match="b_dec_init"):
        SAEConfig.from_cfg(make_cfg(b_dec_init="median"), d_in=32)
    with pytest.raises(ConfigError, match="larger than d_sae"):
        SAEConfig.from_cfg(make_cfg(k=1000, k_percent=None), d_in=32)


def test_lr_schedule_warmup_then_decay():
    s = LRSchedule(warmup_steps=10, decay="linear", decay_start=0.5, total_steps=100)
    assert s(0) == pytest.approx(0.1) and s(9) == 1.0 and s(49) == 1.0
    assert s(75) == pytest.approx(0.5) and s(100) == 0.0
    c = LRSchedule(warmup_steps=0, decay="cosine", decay_start=0.0, total_steps=100)
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0, abs=1e-12)
    assert LRSchedule(5, "none", 0.0, 100)(99) == 1.0
