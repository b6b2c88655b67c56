"""Report section of edge attribution patching (refusal/evaluation/eap.py). A result that is absent or marks itself
missing/skipped gives a missing section, as in refusal/evaluation/sections.py."""
from __future__ import annotations

from pathlib import Path

from refusal.evaluation.report import Image, Section, Table, Text

EAP_KEY, EAP_TITLE = "eap", "Edge attribution patching (which paths carry refusal)"
N_TOP = 10


def _missing(result) -> Section | None:
    if not result:
        return Section(EAP_KEY, EAP_TITLE, missing="the eap stage did not run")
    if isinstance(result, dict) and result.get("status") in ("missing", "skipped"):
        return Section(EAP_KEY, EAP_TITLE, missing=result.get("reason") or "the eap stage did not run",
                       not_run=result.get("status") == "skipped")
    return None


def _top_edges(result: dict, method: str) -> Table:
    top = result["top_edges"][method]
    rows = [[i + 1, f"{e['sender']} → {e['receiver']}", e["score"]] for i, e in enumerate(top["all"][:N_TOP])]
    return Table(["rank", "edge", "score (all)"], rows,
                 f"{method}: the {len(rows)} edges with the largest |score|, pooled; score = predicted change of the "
                 "mean refusal score when only the receiver sees the sender's safe-prompt output (negative: the edge "
                 "carries refusal)")


def _per_category(result: dict, method: str) -> Table:
    rows = []
    for g in ["all", *result["categories"]]:
        top = result["top_edges"][method][g]
        rows.append([g, *(f"{e['sender']} → {e['receiver']} ({e['score']:.3g})" for e in top[:3])] +
                    [None] * (3 - len(top[:3])))
    return Table(["group", "1st", "2nd", "3rd"], rows, f"{method}: the top 3 edges of each category")


def _components(result: dict, method: str) -> Table:
    comps = result["components"][method]["all"]
    out = sorted(comps["out"].items(), key=lambda kv: -abs(kv[1]))[:N_TOP]
    return Table(["component", "out (Σ outgoing edges)", "in (Σ incoming edges)"],
                 [[c, v, comps["in"].get(c)] for c, v in out],
                 f"{method}: the components with the largest |outgoing| sum (= their node attribution score), pooled")


def _validation(result: dict) -> Table | None:
    val = result.get("validation")
    if not val:
        return None
    rows = [[m, v["spearman"], f"{v['top_k_overlap']:.2f} (k={v['k']})", v["sign_agreement"]]
            for m, v in val.items() if isinstance(v, dict)]
    return Table(["method", "Spearman vs exact", "top-k overlap", "sign agreement"], rows,
                 f"agreement with exact path patching of all {result['n_edges']} edges "
                 f"({val.get('seconds_exact', 0):.0f}s); sign agreement on edges with |exact| ≥ 1% of the largest")


def eap_section(result) -> Section:
    miss = _missing(result)
    if miss:
        return miss
    blocks = [Text(f"Edge attribution patching on {result['n_toxic']} toxic and {result['n_safe']} safe "
                   f"{result['split']} prompts ({result['corruption']} corruption), at the last "
                   f"{result['n_positions']} prompt tokens; {result['n_senders']} senders (embeddings, heads, MLPs), "
                   f"{result['n_receivers']} receivers (heads, MLPs, logits), {result['n_edges']} edges. "
                   "EAP: (a_corrupt − a_clean) · ∂m/∂(receiver input) at the clean run; EAP-IG: the gradient "
                   f"averaged over {result['ig_steps']} points interpolating every sender's output from corrupt to "
                   "clean. m: refusal score (log-odds of refusal tokens at the first response position)."),
              Table(["group", "prompts", "m_clean (toxic)", "m_corrupt (safe)"],
                    [[g, b["n"], b["m_clean"], b["m_corrupt"]] for g, b in result["baseline"].items()],
                    "unpatched mean refusal scores")]
    val = _validation(result)
    if val is not None:
        blocks.append(val)
    for method in result["methods"]:
        blocks += [_top_edges(result, method), _per_category(result, method), _components(result, method)]
        if (result.get("plots") or {}).get(method):
            blocks.append(Image(Path(result["plots"][method]), f"{method}: top edges, sender × receiver, pooled"))
    return Section(EAP_KEY, EAP_TITLE, blocks)
