"""The `sae` config group: one schema per trainable architecture (conf/sae/<architecture>.yaml lists
``schema_<architecture>``), and the node validated and resolved against the activation width (d_sae, k).

Each architecture has an exact key set (its schema's fields); a missing or unknown key is an error, from Hydra when
composing and from :meth:`SAEConfig.from_cfg` for a config given as a plain mapping.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, List, Mapping, Optional

from omegaconf import MISSING

from refusal.config import choice, integer, number, plain, register
from refusal.errors import ConfigError

TRAINABLE = ("topk", "batchtopk", "relu_l1")
B_DEC_INITS = ("mean", "geometric_median", "zeros")
LR_DECAYS = ("none", "linear", "cosine")
KERNELS = ("auto", "dense", "sparse")
# kernel=auto picks the sparse kernels (refusal/sae/sparse.py) when k / d_sae is at most this (bench/sae_kernels.py)
SPARSE_MAX_DENSITY = 0.05


@dataclass
class _Common:
    architecture: str = MISSING
    expansion_factor: Optional[float] = MISSING
    d_sae: Optional[int] = MISSING
    dead_tokens_threshold: int = MISSING
    b_dec_init: str = MISSING
    lr: float = MISSING
    betas: List[float] = MISSING
    lr_warmup_steps: int = MISSING
    lr_decay: str = MISSING
    lr_decay_start: float = MISSING


@dataclass
class TopKSchema(_Common):
    k: Optional[int] = MISSING
    k_percent: Optional[float] = MISSING
    aux_k: int = MISSING
    aux_coeff: float = MISSING
    kernel: str = MISSING


@dataclass
class BatchTopKSchema(TopKSchema):
    """Same keys as TopK; ``k`` is the mean number of active latents over a batch."""


@dataclass
class ReluL1Schema(_Common):
    l1_coeff: float = MISSING
    sparsity_warmup_steps: int = MISSING


SCHEMAS = {"topk": TopKSchema, "batchtopk": BatchTopKSchema, "relu_l1": ReluL1Schema}
KEYS = {arch: {f.name for f in fields(node)} for arch, node in SCHEMAS.items()}
for _arch, _node in SCHEMAS.items():
    register("sae", _node, name=f"schema_{_arch}")


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
    kernel: str = "dense"  # "dense" | "sparse" (resolved from the config's auto | dense | sparse)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], d_in: int) -> "SAEConfig":
        cfg = dict(plain(cfg))
        arch = cfg.get("architecture")
        if arch == "jumprelu":
            raise ConfigError("sae.architecture='jumprelu' can only be loaded (load_saelens), not trained; "
                              f"choose one of {list(TRAINABLE)}")
        choice("sae.architecture", arch, TRAINABLE)
        missing, unknown = sorted(KEYS[arch] - cfg.keys()), sorted(cfg.keys() - KEYS[arch])
        if missing or unknown:
            raise ConfigError(f"sae config for architecture={arch!r}: missing keys {missing}, unknown keys "
                              f"{unknown}; the valid keys are {sorted(KEYS[arch])}")
        integer("d_in", d_in, 1)
        choice("sae.b_dec_init", cfg["b_dec_init"], B_DEC_INITS)
        choice("sae.lr_decay", cfg["lr_decay"], LR_DECAYS)

        d_sae = _exactly_one(cfg, "d_sae", "expansion_factor")
        d_sae = integer("sae.d_sae", d_sae, 1) if cfg["d_sae"] is not None else \
            round(number("sae.expansion_factor", cfg["expansion_factor"], 0, open_lo=True) * d_in)
        if d_sae < 1:
            raise ConfigError(f"sae.expansion_factor={cfg['expansion_factor']} gives d_sae={d_sae}; it must be >= 1")

        k = aux_k = None
        kernel = "dense"
        aux_coeff = l1_coeff = 0.0
        sparsity_warmup = 0
        if arch in ("topk", "batchtopk"):
            _exactly_one(cfg, "k", "k_percent")
            if cfg["k"] is not None:
                k = integer("sae.k", cfg["k"], 1)
            else:
                frac = number("sae.k_percent", cfg["k_percent"], 0, open_lo=True)
                k = round(frac * d_sae)
                if k < 1:
                    raise ConfigError(f"sae.k_percent={frac} gives k={k} for d_sae={d_sae}; it must give k >= 1")
            if k > d_sae:
                raise ConfigError(f"sae k={k} is larger than d_sae={d_sae}; choose k in [1, {d_sae}]")
            aux_k = min(integer("sae.aux_k", cfg["aux_k"], 1), d_sae)  # at most aux_k dead latents: all if fewer
            aux_coeff = number("sae.aux_coeff", cfg["aux_coeff"], 0)
            kernel = choice("sae.kernel", cfg["kernel"], KERNELS)
            if kernel == "auto":
                kernel = "sparse" if k / d_sae <= SPARSE_MAX_DENSITY else "dense"
        else:
            l1_coeff = number("sae.l1_coeff", cfg["l1_coeff"], 0)
            sparsity_warmup = integer("sae.sparsity_warmup_steps", cfg["sparsity_warmup_steps"], 0)

        betas = cfg["betas"]
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
            raise ConfigError(f"sae.betas={betas!r} is not valid; give two numbers in [0, 1), e.g. [0.9, 0.999]")
        start = number("sae.lr_decay_start", cfg["lr_decay_start"], 0, 1, open_hi=True)
        return cls(
            architecture=arch, d_in=d_in, d_sae=d_sae, k=k, aux_k=aux_k, aux_coeff=aux_coeff, l1_coeff=l1_coeff,
            sparsity_warmup_steps=sparsity_warmup,
            dead_tokens_threshold=integer("sae.dead_tokens_threshold", cfg["dead_tokens_threshold"], 1),
            b_dec_init=cfg["b_dec_init"], lr=number("sae.lr", cfg["lr"], 0, open_lo=True),
            betas=(float(betas[0]), float(betas[1])),
            lr_warmup_steps=integer("sae.lr_warmup_steps", cfg["lr_warmup_steps"], 0),
            lr_decay=cfg["lr_decay"], lr_decay_start=start, kernel=kernel,
        )


def _exactly_one(cfg: dict, a: str, b: str):
    if (cfg[a] is None) == (cfg[b] is None):
        raise ConfigError(f"sae.{a}={cfg[a]!r} and sae.{b}={cfg[b]!r}: set exactly one of them, the other to null")
    return cfg[a] if cfg[a] is not None else cfg[b]
