"""Per-prompt indirect effects (IE) of every node on the metric m (DESIGN §3 Attribution).

IE of a node = m(clean) − m(clean with that node set to its patch value), estimated by
- ``atp``: (a_clean − a_patch)·∂m/∂a at clean — one forward + one backward per batch for all nodes of all hooks;
- ``lrp``: as ``atp``, with ∂m/∂a read from the LRP-linearised backward (refusal/circuit/lrp.py: RMSNorm scale and
  softmax probabilities detached, eager attention, identity rule for the MLP activation, half rule for gate × up),
  so that over a complete cut the relevances are conservative; m_clean is read in the same (eager) forward;
- ``ig``: (a_clean − a_patch)·mean_k ∂m/∂a at a_patch + (k/K)(a_clean − a_patch), k = 1..K, every node of one
  hook interpolated together, one hook at a time (K forwards + backwards per hook and batch);
- ``exact``: patch each node and rerun (each node at all its positions at once with ``aggregation: sum``, else
  each node × position; a node whose patch value equals its clean value is 0 without a run); ground truth for
  small node sets, refused above ``exact_max_nodes``;
- ``stats``: not an effect — the contrastive activation difference a_clean − a_patch of each feature (the norm
  of the difference for error nodes); the older system's ranking, kept as a reference method to compare with.
Results are per prompt ([n_prompts, n_nodes], aggregated over positions as configured) so that statistics can
regroup prompts without another model pass.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from refusal.circuit.lrp import lrp_linearised
from refusal.circuit.model import CircuitModel, Values
from refusal.circuit.nodes import NodeSpace, aggregate
from refusal.circuit.patch import PatchSource
from refusal.errors import ConfigError, check_choice
from refusal.model.chat import EncodedBatch

METHODS = ("atp", "ig", "exact", "stats", "lrp")
EXACT_ROWS = 64  # prompts × patched nodes per forward of the exact method


@dataclass
class Attributions:
    ie: torch.Tensor  # [n_prompts, n_nodes] float32
    m_clean: torch.Tensor  # [n_prompts] float64
    m_patch: torch.Tensor  # [n_prompts] float64: every hook's nodes set to the patch values


def node_space(cm: CircuitModel, aggregation: str) -> NodeSpace:
    return NodeSpace(tuple(cm.hooks), tuple(s.sae.d_sae for s in cm.saes.values()), cm.n_positions, aggregation)


def _expand(v: Values, B: int) -> Values:
    return {h: (f.expand(B, *f.shape[1:]), e.expand(B, *e.shape[1:])) for h, (f, e) in v.items()}


def _atp(cm, enc, clean, patch, grads, **_):
    out = []
    for h in cm.hooks:
        (fc, ec), (fp, ep), (gf, ge) = clean[h], patch[h], grads[h]
        out.append(torch.cat([(fc - fp) * gf, ((ec - ep) * ge).sum(-1, keepdim=True)], -1))
    return out


def _stats(cm, enc, clean, patch, **_):
    return [torch.cat([clean[h][0] - patch[h][0], (clean[h][1] - patch[h][1]).norm(dim=-1, keepdim=True)], -1)
            for h in cm.hooks]


def _ig(cm, enc, clean, patch, steps: int, **_):
    out = []
    for h in cm.hooks:
        (fc, ec), (fp, ep) = clean[h], patch[h]
        df, de = fc - fp, ec - ep
        gf, ge = torch.zeros_like(fc), torch.zeros_like(ec)
        for k in range(1, steps + 1):
            a = k / steps
            f = (fp + a * df).detach().requires_grad_(True)
            e = (ep + a * de).detach().requires_grad_(True)
            m, _ = cm.run(enc, {h: "set"}, {h: (f, e)}, grad=True)
            g = torch.autograd.grad(m.sum(), [f, e])
            gf += g[0]
            ge += g[1]
        out.append(torch.cat([df * gf / steps, (de * ge).sum(-1, keepdim=True) / steps], -1))
    return out


def _repeat(enc: EncodedBatch, n: int) -> EncodedBatch:
    return EncodedBatch(*(getattr(enc, k).repeat(n, *[1] * (getattr(enc, k).ndim - 1)) for k in enc.__dataclass_fields__))


@torch.no_grad()
def _exact(cm, enc, clean, patch, per_position: bool, **_):
    B = enc.input_ids.shape[0]
    P = cm.n_positions
    chunk = max(1, EXACT_ROWS // B)
    out = []
    for h in cm.hooks:
        (fc, ec), (fp, ep) = clean[h], patch[h]
        n_feat = fc.shape[-1]
        # a node whose patch value equals its clean value in every row has IE exactly 0: no forward needed
        same = torch.cat([(fc == fp).all(0), (ec == ep).all(-1).all(0)[:, None]], -1)  # [P, n_feat + 1]
        units = [(j, p) for j in range(n_feat + 1) for p in (range(P) if per_position else [None])
                 if not bool(same[:, j].all() if p is None else same[p, j])]
        ie = torch.zeros(B, P if per_position else 1, n_feat + 1, dtype=fc.dtype, device=fc.device)
        m_ref, _ = cm.run(enc, {h: "set"}, {h: (fc, ec)})  # spliced at clean values: same rounding as below
        for start in range(0, len(units), chunk):
            part = units[start:start + chunk]
            n = len(part)
            f, e = fc.repeat(n, 1, 1), ec.repeat(n, 1, 1)
            for k, (j, p) in enumerate(part):
                rows, pos = slice(k * B, (k + 1) * B), slice(None) if p is None else slice(p, p + 1)
                if j < n_feat:
                    f[rows, pos, j] = fp[:, pos, j]
                else:
                    e[rows, pos] = ep[:, pos]
            m, _ = cm.run(_repeat(enc, n), {h: "set"}, {h: (f, e)})
            delta = (m_ref.repeat(n) - m).view(n, B)
            for k, (j, p) in enumerate(part):
                ie[:, 0 if p is None else p, j] = delta[k].to(ie.dtype)
        out.append(ie)
    return out


def check_exact_size(space: NodeSpace, max_nodes: int) -> None:
    per_hook = [(d + 1) * (space.n_positions if space.aggregation != "sum" else 1) for d in space.d_sae]
    if sum(per_hook) > max_nodes:
        raise ConfigError(f"circuit.attribution_method=exact needs one forward per node: {sum(per_hook)} nodes "
                          f"(hooks {list(space.hooks)}) > circuit.exact_max_nodes={max_nodes}; use atp or ig, fewer "
                          "hooks or a smaller SAE, or raise exact_max_nodes")


def attribute(cm: CircuitModel, prompts: list[str], source: PatchSource, method: str, aggregation: str,
              ig_steps: int = 10, exact_max_nodes: int = 4096) -> Attributions:
    """IE of every node for every prompt of ``prompts`` (clean) against ``source`` (patch)."""
    check_choice("circuit.attribution_method", method, METHODS)
    space = node_space(cm, aggregation)
    if method == "exact":
        check_exact_size(space, exact_max_nodes)
    if method == "ig" and (not isinstance(ig_steps, int) or ig_steps < 1):
        raise ConfigError(f"circuit.n_integration_steps={ig_steps!r} is not valid; use an int >= 1")
    fn = {"atp": _atp, "lrp": _atp, "ig": _ig, "exact": _exact, "stats": _stats}[method]
    ies, mc, mp = [], [], []
    for rows, enc in cm.batches(prompts):
        B = len(rows)
        grads = None
        if method in ("atp", "lrp"):
            with lrp_linearised(cm.model) if method == "lrp" else contextlib.nullcontext():
                m_clean, clean, grads = cm.read(enc)
        else:
            m_clean, clean = cm.capture(enc)
        patch = _expand(source.values(rows, clean), B)
        per_hook = fn(cm, enc, clean=clean, patch=patch, grads=grads, steps=ig_steps,
                      per_position=aggregation != "sum")
        agg = "sum" if method == "exact" and aggregation == "sum" else aggregation
        ies.append(torch.cat([aggregate(t.float(), agg) for t in per_hook], -1).cpu())
        mc.append(m_clean.detach().cpu())
        mp.append(cm.patched(enc, patch).cpu())
    return Attributions(torch.cat(ies), torch.cat(mc), torch.cat(mp))
