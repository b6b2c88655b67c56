"""The ``circuit`` config group (conf/circuit/): its schema and the discovery settings it turns into, checked before
any model is loaded."""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from refusal.circuit.dashboard_stats import DashboardSettings
from refusal.circuit.neurons import BASES, NeuronSettings, neuron_settings
from refusal.circuit.select import Selection
from refusal.circuit.summary import StatsSettings
from refusal.circuit.verdict import DecisionRule
from refusal.config import choice, flag, integer, plain, register
from refusal.data import LABELS

DISCOVERY_SPLITS = ("train", "val")


@dataclass
class StatisticsSchema:
    n_permutations: int = MISSING
    n_resamples: int = MISSING
    ci_level: float = MISSING
    alpha: float = MISSING
    modular_min_pair_fraction: float = MISSING
    modular_max_core_mass: float = MISSING
    monolithic_min_core_mass: float = MISSING
    max_error_mass: float = MISSING


@dataclass
class DashboardsSchema:
    enabled: bool = MISSING
    top_examples: int = MISSING
    top_tokens: int = MISSING


@dataclass
class NeuronsSchema:
    layers: Any = MISSING
    universal_top_k: int = MISSING
    universal_fraction: float = MISSING


@dataclass
class CircuitSchema:
    basis: str = MISSING
    discovery_split: str = MISSING
    positions: str = MISSING
    aggregation: str = MISSING
    attribution_method: str = MISSING
    n_integration_steps: int = MISSING
    exact_max_nodes: int = MISSING
    metric: str = MISSING
    compliance_tokens: List[str] = MISSING
    patch: str = MISSING
    safe_labels: List[str] = MISSING
    separate_safe_toxic: bool = MISSING
    min_prompts_per_category: int = MISSING
    batch_size: int = MISSING
    max_length: int = MISSING
    node_threshold: Optional[float] = MISSING
    threshold_mode: str = MISSING
    top_n_per_layer: Optional[int] = MISSING
    cumulative_fraction: Optional[float] = MISSING
    edge_threshold: float = MISSING
    statistics: StatisticsSchema = field(default_factory=StatisticsSchema)
    dashboards: DashboardsSchema = field(default_factory=DashboardsSchema)
    neurons: NeuronsSchema = field(default_factory=NeuronsSchema)


register("circuit", CircuitSchema)


@dataclass(frozen=True)
class DiscoverySettings:
    """The ``circuit`` node, checked: what discover.py needs to attribute, select, compare and decide."""
    basis: str  # sae | neurons (refusal/circuit/neurons.py)
    neurons: NeuronSettings
    discovery_split: str
    safe_labels: list[str]
    positions: str
    aggregation: str
    metric: str
    compliance_tokens: list[str]
    separate_safe_toxic: bool
    min_prompts_per_category: int
    batch_size: int
    max_length: int
    attribution: dict  # keyword arguments of refusal.circuit.discovery.attribute_group
    selection: Selection
    stats: StatsSettings
    rule: DecisionRule
    dashboards: DashboardSettings


def settings_from(c) -> DiscoverySettings:
    """Check the ``circuit`` config node before any model is loaded."""
    safe_labels = [choice("circuit.safe_labels entry", lb, [x for x in LABELS if x != "toxic"])
                   for lb in plain(c.safe_labels)]
    s, d = c.statistics, c.dashboards
    return DiscoverySettings(
        basis=choice("circuit.basis", c.basis, BASES), neurons=neuron_settings(c.neurons),
        discovery_split=choice("circuit.discovery_split", c.discovery_split, DISCOVERY_SPLITS),
        safe_labels=safe_labels, positions=c.positions, aggregation=c.aggregation, metric=c.metric,
        compliance_tokens=plain(c.compliance_tokens), separate_safe_toxic=c.separate_safe_toxic,
        min_prompts_per_category=integer("circuit.min_prompts_per_category", c.min_prompts_per_category, 2),
        batch_size=integer("circuit.batch_size", c.batch_size, 1),
        max_length=integer("circuit.max_length", c.max_length, 8),
        attribution=dict(patch=c.patch, method=c.attribution_method, aggregation=c.aggregation,
                         ig_steps=integer("circuit.n_integration_steps", c.n_integration_steps, 1),
                         exact_max_nodes=integer("circuit.exact_max_nodes", c.exact_max_nodes, 1)),
        selection=Selection(c.node_threshold, c.threshold_mode, c.top_n_per_layer, c.cumulative_fraction,
                            c.edge_threshold),
        stats=StatsSettings(s.n_permutations, s.n_resamples, s.ci_level),
        rule=DecisionRule(s.alpha, s.modular_min_pair_fraction, s.modular_max_core_mass, s.monolithic_min_core_mass,
                          s.max_error_mass),
        dashboards=DashboardSettings(flag("circuit.dashboards.enabled", d.enabled),
                                     integer("circuit.dashboards.top_examples", d.top_examples, 1),
                                     integer("circuit.dashboards.top_tokens", d.top_tokens, 1)))
