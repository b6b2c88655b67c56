"""Hand-made circuit files for the graph tests: three toxic categories sharing feature 3 of layer 1 (and edge
1/3 -> 2/7 in every one), the pooled and a safe circuit that the graph must leave out."""
from __future__ import annotations

H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"


def node(hook: str, feature, attribution: float, position=None) -> dict:
    nid = f"{hook}/{feature}" + ("" if position is None else f"@{position}")
    return {"id": nid, "hook": hook, "layer": int(hook.split(".")[1]), "feature": feature, "position": position,
            "attribution": attribution}


def circuit(category: str, nodes: list[dict], edges: list[tuple[str, str, float]], kind: str = "toxic") -> dict:
    return {"category": category, "kind": kind, "nodes": nodes,
            "edges": [{"source": s, "target": t, "weight": w} for s, t, w in edges],
            "manifest": {"model": "tiny-llama"}}


def circuits() -> list[dict]:
    shared_edge = (f"{H1}/3", f"{H2}/7", 0.5)
    return [
        circuit("cyber", [node(H1, 3, 0.9), node(H2, 7, 0.4), node(H2, 11, -0.2), node(H1, "error", 0.3)],
                [shared_edge, (f"{H1}/3", f"{H2}/11", -0.25), (f"{H1}/error", f"{H2}/7", 0.1)]),
        circuit("fraud", [node(H1, 3, 0.5), node(H2, 7, 0.6), node(H1, 5, 0.123456789123), node(H1, "error", 0.2)],
                [shared_edge, (f"{H1}/5", f"{H2}/7", 0.05)]),
        circuit("violence", [node(H1, 3, 0.7), node(H2, 7, 0.1), node(H2, 11, 0.3)],
                [(f"{H1}/3", f"{H2}/7", 0.9)]),
        circuit("all", [node(H1, 3, 1.0), node(H1, 99, 1.0)], []),
        circuit("benign", [node(H1, 42, 1.0)], [], kind="safe"),
    ]
