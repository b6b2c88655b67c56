"""The benches' SAE config: conf/sae/<arch>.yaml as the plain mapping SAEConfig.from_cfg and SAELightningModule take
(the schema entry Hydra composes dropped), with overrides."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf" / "sae"


def sae_config(arch: str = "topk", **overrides) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{arch}.yaml"))
    cfg.pop("defaults")
    cfg.update(overrides)
    return cfg
