"""The verdict across the two bases (SAE feature sets, residual directions): refusal.verdict.bases."""
from refusal.verdict.bases import across_bases


def basis(verdict: str, possible_layers=()) -> tuple[dict, list[dict]]:
    layers = [{"layer": i, "decision": {"bottleneck_possible": i in possible_layers}} for i in range(3)]
    return {"verdict": verdict}, layers


def test_agreeing_bases_give_their_verdict():
    for v in ("monolithic", "modular", "mixed", "inconclusive"):
        got = across_bases({"features": basis(v), "directions": basis(v)})
        assert got["verdict"] == v and got["by_basis"] == {"features": v, "directions": v}


def test_contradicting_conclusive_bases_are_inconclusive():
    got = across_bases({"features": basis("monolithic"), "directions": basis("modular")})
    assert got["verdict"] == "inconclusive" and "contradict" in got["reason"]
    assert across_bases({"features": basis("mixed"), "directions": basis("monolithic")})["verdict"] == "inconclusive"


def test_one_conclusive_basis_decides_unless_modular_meets_a_possible_bottleneck():
    got = across_bases({"features": basis("inconclusive"), "directions": basis("monolithic")})
    assert got["verdict"] == "monolithic" and got["basis"] == ["directions"]
    assert "features: inconclusive" in got["reason"]
    assert across_bases({"features": basis("inconclusive"), "directions": basis("modular")})["verdict"] == "modular"
    blocked = across_bases({"features": basis("inconclusive", [1]), "directions": basis("modular")})
    assert blocked["verdict"] == "inconclusive" and "features layers [1] could hold a shared bottleneck" in \
        blocked["reason"]
    # a possible bottleneck does not block a monolithic verdict from the other basis
    assert across_bases({"features": basis("inconclusive", [1]),
                         "directions": basis("monolithic")})["verdict"] == "monolithic"


def test_an_unmeasured_basis_does_not_vote():
    got = across_bases({"features": basis("modular"), "directions": None})
    assert got["verdict"] == "modular" and got["by_basis"] == {"features": "modular"}
    assert across_bases({"features": None, "directions": None})["verdict"] == "inconclusive"
