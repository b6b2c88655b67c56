"""The ``evaluation`` config group (conf/evaluation/): its schema and the settings it turns into, checked before
anything is loaded."""
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np
from omegaconf import MISSING

from refusal.behavior.rates import Bootstrap
from refusal.config import choice, integer, number, plain, register
from refusal.data.records import SPLITS
from refusal.errors import ConfigError
from refusal.evaluation.circuit_setup import ABLATIONS
from refusal.circuit.verdict import TransferRule
from refusal.evaluation.direction import DirectionSettings, RdoSettings
from refusal.evaluation.cast import CastSettings
from refusal.evaluation.estimators import CLOSED_FORM, ESTIMATORS
from refusal.evaluation.neurons import NeuronSettings
from refusal.evaluation.interventions import ARDITI_KINDS
from refusal.evaluation.transfer import TransferSettings
from refusal.evaluation.ablation_curve import AblationCurveSchema, AblationCurveSettings
from refusal.evaluation.bottleneck import BottleneckSchema, BottleneckSettings
from refusal.evaluation.bottleneck_sets import size_value
from refusal.evaluation.eap import EapSchema, EapSettings
from refusal.evaluation.lens import LensSchema, LensSettings
from refusal.evaluation.patching import PatchingSchema, PatchingSettings
from refusal.evaluation.probes import ProbeSettings, ProbesSchema
from refusal.model.hooks import HOOK_KINDS, layer_spec

STAGES = ("baseline", "sae_quality", "faithfulness", "transfer", "bottleneck", "direction", "cast", "neurons",
          "patching", "ablation_curve", "eap", "lens", "probes")


@dataclass
class SAEQualitySchema:
    max_prompts: int = MISSING


@dataclass
class FaithfulnessSchema:
    thresholds: List[float] = MISSING
    n_random: int = MISSING


@dataclass
class TransferSchema:
    generate: bool = MISSING
    include_error_nodes: bool = MISSING
    size: Any = MISSING  # int >= 1 feature nodes per hook per row, a fraction in (0, 1), or None (the circuits)
    n_random: int = MISSING
    n_permutations: int = MISSING
    alpha: float = MISSING
    modular_max_transfer: float = MISSING
    monolithic_min_transfer: float = MISSING
    min_own_share: float = MISSING


@dataclass
class CaaSchema:
    refusal: str = MISSING
    compliance: str = MISSING


@dataclass
class RdoSchema:
    steps: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    kl_weight: float = MISSING


@dataclass
class DirectionSchema:
    candidate_split: str = MISSING
    selection_split: str = MISSING
    n_selection_prompts: int = MISSING
    ablation_hooks: List[str] = MISSING
    max_kl: float = MISSING
    candidate_layers: Any = MISSING  # layer spec: int, list, "a-b", all, mid
    max_layer_fraction: float = MISSING
    induce_min_score: float = MISSING
    actadd_coeff: float = MISSING
    filter_by_score: bool = MISSING
    outlier_factor: float = MISSING
    method: str = MISSING
    compare_methods: List[str] = MISSING
    compare_at: str = MISSING
    shrinkage: Any = MISSING  # auto | number in [0, 1]
    probe_l2: float = MISSING
    caa: CaaSchema = field(default_factory=lambda: CaaSchema())
    rdo: RdoSchema = field(default_factory=lambda: RdoSchema())
    export: bool = MISSING


@dataclass
class CastSchema:
    layer: Any = MISSING  # selected | int
    estimator: str = MISSING
    threshold_split: str = MISSING
    coeff: float = MISSING


@dataclass
class NeuronSchema:
    ks: List[int] = MISSING
    steer_k: int = MISSING


@dataclass
class EvaluationSchema:
    judge: Any = MISSING  # a behavior/judge node (refusal.behavior.judge.build_judge)
    stages: List[str] = MISSING
    split: str = MISSING
    batch_size: int = MISSING
    max_new_tokens: int = MISSING
    max_length: Optional[int] = MISSING
    ablation: str = MISSING
    bootstrap: Bootstrap = field(default_factory=Bootstrap)  # the CI settings of every refusal measurement
    sae_quality: SAEQualitySchema = field(default_factory=SAEQualitySchema)
    faithfulness: FaithfulnessSchema = field(default_factory=FaithfulnessSchema)
    transfer: TransferSchema = field(default_factory=TransferSchema)
    direction: DirectionSchema = field(default_factory=DirectionSchema)
    cast: CastSchema = field(default_factory=CastSchema)
    neurons: NeuronSchema = field(default_factory=NeuronSchema)
    patching: PatchingSchema = field(default_factory=PatchingSchema)
    ablation_curve: AblationCurveSchema = field(default_factory=AblationCurveSchema)
    eap: EapSchema = field(default_factory=EapSchema)
    lens: LensSchema = field(default_factory=LensSchema)
    probes: ProbesSchema = field(default_factory=ProbesSchema)
    bottleneck: BottleneckSchema = field(default_factory=BottleneckSchema)


register("evaluation", EvaluationSchema)


@dataclass
class EvalSettings:
    judge: Any  # the judge config node
    stages: list[str]
    split: str
    batch_size: int
    max_new_tokens: int
    max_length: int | None
    ablation: str
    boot: Bootstrap
    sae_max_prompts: int
    thresholds: list[float]
    faith_n_random: int
    transfer: TransferSettings
    direction: DirectionSettings
    cast: CastSettings
    neurons: NeuronSettings
    patching: PatchingSettings
    ablation_curve: AblationCurveSettings
    eap: EapSettings
    lens: LensSettings
    probes: ProbeSettings
    bottleneck: BottleneckSettings


def _thresholds(values) -> list[float]:
    if not values:
        raise ConfigError(f"evaluation.faithfulness.thresholds={values!r} is not valid; use a non-empty list of "
                          "numbers >= 0")
    return [number("evaluation.faithfulness.thresholds entry", t, 0) for t in values]


def _transfer(t) -> TransferSettings:
    rule = TransferRule(t.alpha, t.modular_max_transfer, t.monolithic_min_transfer, t.min_own_share)
    size = None if t.size is None else size_value("evaluation.transfer.size", t.size)
    if size is not None and t.include_error_nodes:
        raise ConfigError(f"evaluation.transfer.include_error_nodes=true needs evaluation.transfer.size=null (rows "
                          f"of size {size} are feature nodes only); got size={size}")
    return TransferSettings(t.generate, t.include_error_nodes, integer("evaluation.transfer.n_random", t.n_random, 0),
                            integer("evaluation.transfer.n_permutations", t.n_permutations, 1), rule, size)


def _direction(d) -> DirectionSettings:
    hooks = tuple(choice("evaluation.direction.ablation_hooks entry", k, HOOK_KINDS) for k in plain(d.ablation_hooks))
    return DirectionSettings(
        choice("evaluation.direction.candidate_split", d.candidate_split, SPLITS),
        choice("evaluation.direction.selection_split", d.selection_split, SPLITS),
        integer("evaluation.direction.n_selection_prompts", d.n_selection_prompts, 1), hooks or ARDITI_KINDS,
        number("evaluation.direction.max_kl", d.max_kl, 0),
        number("evaluation.direction.max_layer_fraction", d.max_layer_fraction, 0, 1, open_lo=True),
        number("evaluation.direction.induce_min_score", d.induce_min_score),
        number("evaluation.direction.actadd_coeff", d.actadd_coeff),
        layer_spec("evaluation.direction.candidate_layers", plain(d.candidate_layers)), bool(d.filter_by_score),
        _outlier_factor(d.outlier_factor), choice("evaluation.direction.method", d.method, ESTIMATORS),
        tuple(choice("evaluation.direction.compare_methods entry", m, ESTIMATORS) for m in plain(d.compare_methods)),
        choice("evaluation.direction.compare_at", d.compare_at, ("selected", "strongest")),
        _shrinkage(d.shrinkage), number("evaluation.direction.probe_l2", d.probe_l2, 0),
        (str(d.caa.refusal), str(d.caa.compliance)),
        RdoSettings(integer("evaluation.direction.rdo.steps", d.rdo.steps, 0),
                    number("evaluation.direction.rdo.lr", d.rdo.lr, 0, open_lo=True),
                    integer("evaluation.direction.rdo.batch_size", d.rdo.batch_size, 1),
                    number("evaluation.direction.rdo.kl_weight", d.rdo.kl_weight, 0)), bool(d.export))


def _shrinkage(value):
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"evaluation.direction.shrinkage={value!r} is not valid; use auto (Ledoit-Wolf) or a number "
                          "in [0, 1]")
    return float(value)


def _outlier_factor(value) -> float:
    factor = number("evaluation.direction.outlier_factor", value, 0)
    if 0 < factor < 1:
        raise ConfigError(f"evaluation.direction.outlier_factor={value!r} is not valid; use 0 (keep every dim) or a "
                          "number >= 1 (x the median RMS)")
    return factor


def settings_from(e) -> EvalSettings:
    """Check the ``evaluation`` config node before anything is loaded."""
    stages = [choice("evaluation.stages entry", s, STAGES) for s in plain(e.stages)]
    max_length = e.max_length if e.max_length is None else integer("evaluation.max_length", e.max_length, 1)
    return EvalSettings(
        judge=e.judge, stages=stages, split=choice("evaluation.split", e.split, [s for s in SPLITS if s != "train"]),
        batch_size=integer("evaluation.batch_size", e.batch_size, 1),
        max_new_tokens=integer("evaluation.max_new_tokens", e.max_new_tokens, 1), max_length=max_length,
        ablation=choice("evaluation.ablation", e.ablation, ABLATIONS), boot=Bootstrap.from_cfg(e.bootstrap, "evaluation.bootstrap"),
        sae_max_prompts=integer("evaluation.sae_quality.max_prompts", e.sae_quality.max_prompts, 1),
        thresholds=_thresholds(plain(e.faithfulness.thresholds)),
        faith_n_random=integer("evaluation.faithfulness.n_random", e.faithfulness.n_random, 0),
        transfer=_transfer(e.transfer), direction=_direction(e.direction), cast=_cast(e.cast),
        neurons=NeuronSettings(tuple(integer("evaluation.neurons.ks entry", k, 1) for k in plain(e.neurons.ks)),
                               integer("evaluation.neurons.steer_k", e.neurons.steer_k, 1)),
        patching=PatchingSettings.from_config(e.patching),
        ablation_curve=AblationCurveSettings.from_config(e.ablation_curve), eap=EapSettings.from_config(e.eap),
        lens=LensSettings.from_config(e.lens),
        probes=ProbeSettings.from_config(e.probes), bottleneck=BottleneckSettings.from_config(e.bottleneck))


def _cast(c) -> CastSettings:
    layer = c.layer if c.layer == "selected" else integer("evaluation.cast.layer", c.layer, 0)
    return CastSettings(layer, choice("evaluation.cast.estimator", c.estimator, CLOSED_FORM),
                        choice("evaluation.cast.threshold_split", c.threshold_split, SPLITS),
                        number("evaluation.cast.coeff", c.coeff))
