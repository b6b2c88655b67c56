"""Every node selection option changes the result; bad values are one-line ConfigErrors."""
import pytest
import torch

from refusal.circuit.select import Selection, select_nodes
from refusal.errors import ConfigError

IE = torch.tensor([0.5, -0.4, 0.05, 0.0, 0.3, -0.2, 0.1, 0.01, 0.02, -0.6])
HOOK = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])


def kept(sel: Selection, effect: float = 1.0) -> list[int]:
    return torch.nonzero(select_nodes(IE, HOOK, sel, effect)).flatten().tolist()


def test_node_threshold_absolute_and_relative():
    assert kept(Selection(node_threshold=0.25, threshold_mode="absolute")) == [0, 1, 4, 9]
    assert kept(Selection(node_threshold=0.25, threshold_mode="absolute"), effect=0.1) == [0, 1, 4, 9]
    assert kept(Selection(node_threshold=0.25, threshold_mode="relative"), effect=0.1) == [0, 1, 2, 4, 5, 6, 9]
    assert kept(Selection(node_threshold=0.1, threshold_mode="absolute")) == [0, 1, 4, 5, 6, 9]


def test_zero_effect_nodes_never_kept():
    assert 3 not in kept(Selection(node_threshold=0.0, threshold_mode="absolute"))


def test_top_n_per_layer():
    assert kept(Selection(top_n_per_layer=1)) == [0, 9]
    assert kept(Selection(top_n_per_layer=2)) == [0, 1, 5, 9]


def test_cumulative_fraction():
    # |IE| total 2.18; sorted 0.6, 0.5, 0.4, 0.3 ... cumulative 0.6, 1.1, 1.5, 1.8
    assert kept(Selection(cumulative_fraction=0.5)) == [0, 9]
    assert kept(Selection(cumulative_fraction=0.8)) == [0, 1, 4, 9]


def test_rules_combine_as_intersection():
    assert kept(Selection(node_threshold=0.1, threshold_mode="absolute", top_n_per_layer=2)) == [0, 1, 5, 9]
    assert kept(Selection(cumulative_fraction=0.8, top_n_per_layer=1)) == [0, 9]


@pytest.mark.parametrize("kwargs,needle", [
    ({}, "enable at least one"),
    ({"node_threshold": -1}, "circuit.node_threshold=-1"),
    ({"top_n_per_layer": 0}, "circuit.top_n_per_layer=0"),
    ({"cumulative_fraction": 1.5}, "circuit.cumulative_fraction=1.5"),
    ({"top_n_per_layer": 3, "threshold_mode": "percent"}, "circuit.threshold_mode='percent'"),
    ({"top_n_per_layer": 3, "edge_threshold": None}, "circuit.edge_threshold=None"),
])
def test_bad_selection_is_a_config_error(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        Selection(**kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)
