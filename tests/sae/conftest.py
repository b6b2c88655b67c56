from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "sae"


@pytest.fixture
def make_cfg():
    """The real conf/sae/<name>.yaml as a plain dict, with overrides."""
    def make(name: str = "topk", **overrides):
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
        del cfg["defaults"]  # the schema line; the keys below it are the config
        cfg.update(overrides)
        return cfg
    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster and keeps timings steady on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
