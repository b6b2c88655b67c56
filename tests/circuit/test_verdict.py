"""The descriptive rules on hand-made evidence: the discovery (recognition) rule and the transfer rule's threshold
checks. The run's verdict is refusal.verdict's (tests/verdict/)."""
import pytest

from refusal.circuit.verdict import DecisionRule, TransferRule
from refusal.errors import ConfigError


@pytest.mark.parametrize("global_p,pairs,core,error,verdict", [
    (0.01, [True, True, False], 0.1, 0.2, "modular"),
    (0.01, [True, False, False], 0.1, 0.2, "mixed"),   # most pairs do not differ
    (0.01, [True, True, True], 0.6, 0.2, "mixed"),     # differ, but share a large core
    (0.01, [True, True, True], 0.1, 0.8, "mixed"),     # the SAE error nodes carry most of the effect
    (0.40, [False, False, False], 0.7, 0.2, "monolithic"),
    (0.40, [False, False, False], 0.7, 0.6, "mixed"),  # large core, but features explain little
    (0.40, [False, False, False], 0.3, 0.2, "mixed"),  # no difference found, but no large core either
    (0.40, [False], float("nan"), 0.2, "mixed"),
])
def test_decision_rule(global_p, pairs, core, error, verdict):
    out = DecisionRule().decide(global_p, pairs, core, error)
    assert out["verdict"] == verdict
    assert "rule" in out and out["evidence"]["global_p"] == global_p


def test_rule_thresholds_are_checked():
    with pytest.raises(ConfigError, match="modular_max_transfer"):
        TransferRule(modular_max_transfer=0.9, monolithic_min_transfer=0.5)
    with pytest.raises(ConfigError, match=r"^evaluation\.transfer\.alpha=2 is not valid; use a number in \[0, 1\]$"):
        TransferRule(alpha=2)
    with pytest.raises(ConfigError, match=r"^circuit\.statistics\.max_error_mass=True is not valid"):
        DecisionRule(max_error_mass=True)
    with pytest.raises(ConfigError, match=r"^circuit\.statistics\.alpha=nan is not valid"):
        DecisionRule(alpha=float("nan"))
