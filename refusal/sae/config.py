"""The `sae` config node, validated and resolved against the activation width (d_sae, k).

Each architecture has an exact key set (see conf/sae/*.yaml); a missing or unknown key is a ConfigError, so
every key in a config file is one that this package reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from refusal.errors import ConfigError, check_choice

TRAINABLE = ("topk", "batchtopk", "relu_l1")
B_DEC_INITS = ("mean", "geometric_median", "zeros")
LR_DECAYS = ("none", "linear", "cosine")

_COMMON = {"architecture", "expansion_factor", "d_sae", "dead_tokens_threshold", "b_dec_init", "lr", "betas",
           "lr_warmup_steps", "lr_decay", "lr_decay_start"}
_TOPK = {"k", "k_percent", "aux_k", "aux_coeff"}
KEYS = {"topk": _COMMON | _TOPK, "batchtopk": _COMMON | _TOPK, "relu_l1": _COMMON | {"l1_coeff", "sparsity_warmup_steps"}}


@dataclass(frozen=True)
class SAEConfig:
    architecture: str
    d_in: int
    d_sae: int
    k: int | None  # topk / batchtopk: active latents per token (batchtopk: on average over the batch)
    aux_k: int | None
    aux_coeff: float
    l1_coeff: float
    sparsity_warmup_steps: int
    dead_tokens_threshold: int
    b_dec_init: str
    lr: float
    betas: tuple[float, float]
    lr_warmup_steps: int
    lr_decay: str
    lr_decay_start: float

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], d_in: int) -> "SAEConfig":
        cfg = _plain(cfg)
        arch = cfg.get("architecture")
        if arch == "jumprelu":
            raise ConfigError("sae.architecture='jumprelu' can only be loaded (load_saelens), not trained; "
                              f"choose one of {list(TRAINABLE)}")
        check_choice("sae.architecture", arch, TRAINABLE)
        missing, unknown = sorted(KEYS[arch] - cfg.keys()), sorted(cfg.keys() - KEYS[arch])
        if missing or unknown:
            raise ConfigError(f"sae config for architecture={arch!r}: missing keys {missing}, unknown keys "
                              f"{unknown}; the valid keys are {sorted(KEYS[arch])}")
        if not isinstance(d_in, int) or d_in <= 0:
            raise ConfigError(f"d_in={d_in!r} is not valid; it must be a positive int")
        check_choice("sae.b_dec_init", cfg["b_dec_init"], B_DEC_INITS)
        check_choice("sae.lr_decay", cfg["lr_decay"], LR_DECAYS)

        d_sae = _exactly_one(cfg, "d_sae", "expansion_factor")
        d_sae = _pos_int("sae.d_sae", d_sae) if cfg["d_sae"] is not None else \
            round(_pos_num("sae.expansion_factor", cfg["expansion_factor"]) * d_in)
        if d_sae < 1:
            raise ConfigError(f"sae.expansion_factor={cfg['expansion_factor']} gives d_sae={d_sae}; it must be >= 1")

        k = aux_k = None
        aux_coeff = l1_coeff = 0.0
        sparsity_warmup = 0
        if arch in ("topk", "batchtopk"):
            _exactly_one(cfg, "k", "k_percent")
            if cfg["k"] is not None:
                k = _pos_int("sae.k", cfg["k"])
            else:
                frac = _pos_num("sae.k_percent", cfg["k_percent"])
                k = round(frac * d_sae)
                if k < 1:
                    raise ConfigError(f"sae.k_percent={frac} gives k={k} for d_sae={d_sae}; it must give k >= 1")
            if k > d_sae:
                raise ConfigError(f"sae k={k} is larger than d_sae={d_sae}; choose k in [1, {d_sae}]")
            aux_k = min(_pos_int("sae.aux_k", cfg["aux_k"]), d_sae)  # at most aux_k dead latents: all if fewer
            aux_coeff = _nonneg("sae.aux_coeff", cfg["aux_coeff"])
        else:
            l1_coeff = _nonneg("sae.l1_coeff", cfg["l1_coeff"])
            sparsity_warmup = _nonneg_int("sae.sparsity_warmup_steps", cfg["sparsity_warmup_steps"])

        betas = cfg["betas"]
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
            raise ConfigError(f"sae.betas={betas!r} is not valid; give two numbers in [0, 1), e.g. [0.9, 0.999]")
        start = cfg["lr_decay_start"]
        if not isinstance(start, (int, float)) or not 0 <= start < 1:
            raise ConfigError(f"sae.lr_decay_start={start!r} is not valid; give a fraction of total steps in [0, 1)")
        return cls(
            architecture=arch, d_in=d_in, d_sae=d_sae, k=k, aux_k=aux_k, aux_coeff=aux_coeff, l1_coeff=l1_coeff,
            sparsity_warmup_steps=sparsity_warmup,
            dead_tokens_threshold=_pos_int("sae.dead_tokens_threshold", cfg["dead_tokens_threshold"]),
            b_dec_init=cfg["b_dec_init"], lr=_pos_num("sae.lr", cfg["lr"]),
            betas=(float(betas[0]), float(betas[1])),
            lr_warmup_steps=_nonneg_int("sae.lr_warmup_steps", cfg["lr_warmup_steps"]),
            lr_decay=cfg["lr_decay"], lr_decay_start=float(start),
        )


def _plain(cfg: Mapping[str, Any]) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def _exactly_one(cfg: dict, a: str, b: str):
    if (cfg[a] is None) == (cfg[b] is None):
        raise ConfigError(f"sae.{a}={cfg[a]!r} and sae.{b}={cfg[b]!r}: set exactly one of them, the other to null")
    return cfg[a] if cfg[a] is not None else cfg[b]


def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{name}={v!r} is not valid; it must be a positive int")
    return v


def _nonneg_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{name}={v!r} is not valid; it must be an int >= 0")
    return v


def _pos_num(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ConfigError(f"{name}={v!r} is not valid; it must be a number > 0")
    return float(v)


def _nonneg(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
        raise ConfigError(f"{name}={v!r} is not valid; it must be a number >= 0")
    return float(v)
