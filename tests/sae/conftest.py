from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "sae"


@pytest.fixture
def make_cfg():
    """The real conf/sae/<name>.yaml as a plain dict, with overrides."""
    def make(name: str = "topk", **overrides):
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
        cfg.update(overrides)
        return cfg
    return make
