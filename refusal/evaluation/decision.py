"""The transfer-matrix statistic, its tests, the transfer decision rule, and the combined verdict.

Data: d[A, i] = refusal-score drop on held-out toxic prompt i (baseline score − score with category A's circuit
ablated), for every category A with a circuit and every toxic prompt i of those categories; M[A, B] = mean of
d[A, i] over B's prompts.

- **Specificity** S = mean_A M[A, A] − mean_{A≠B} M[A, B]: how much more ablating a category's circuit lowers
  refusal on its own category than on the others. Block-diagonal (modular) → S large; uniform (monolithic) → S ≈ 0.
- **Transfer ratio** ρ = mean_{A≠B} M[A, B] / mean_A M[A, A]: the fraction of the own-category drop that carries
  over to other categories (≈ 0 modular, ≈ 1 monolithic).
  S is unchanged by a row effect (a circuit that lowers refusal everywhere by the same amount, e.g. a larger one)
  and by a column effect (a category whose prompts react more to any ablation): it measures only the
  circuit × category interaction. ρ is descriptive and is not.
- **Beats random**: mean_A M[A, A] − mean_A R[A, A], R from random circuits of the same size per hook; if the
  circuits do not lower refusal more than random feature sets, the matrix says nothing about mechanisms.

Tests: permutation p-value of S (prompts' category labels permuted, group sizes kept, N random relabelings,
p = (1 + #{S_null ≥ S_obs}) / (1 + N); written here because scipy.stats.permutation_test refuses groups of one
prompt, which small held-out splits have); percentile bootstrap CIs of S, ρ and beats-random (prompts resampled
within each category; refusal.circuit.stats.bootstrap). The same statistics are reported for the generated
refusal rate (drop = refused_base − refused_ablated), the decision uses the score.

Transfer rule (:class:`TransferRule`):
    inconclusive  mean own-category drop ≤ 0, or the beats-random CI does not lie above 0
    modular       p(S) ≤ alpha and ρ ≤ modular_max_transfer
    monolithic    p(S) > alpha and ρ ≥ monolithic_min_transfer
    mixed         otherwise
Combined verdict (:func:`combine`): the causal transfer verdict and the discovery (similarity) verdict agree →
that verdict; transfer modular/monolithic and discovery mixed → the transfer verdict (the causal test is the more
direct one); they contradict (modular vs monolithic) or transfer is mixed → mixed; transfer missing or
inconclusive → the discovery verdict, flagged as correlational only; neither → none.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from refusal.circuit.stats import bootstrap
from refusal.errors import ConfigError

TRANSFER_VERDICTS = ("modular", "monolithic", "mixed", "inconclusive")
TRANSFER_RULE = ("inconclusive if the mean own-category score drop <= 0 or the beats-random CI is not above 0; "
                 "modular if p(S) <= alpha and transfer ratio <= modular_max_transfer; monolithic if p(S) > alpha and "
                 "transfer ratio >= monolithic_min_transfer; otherwise mixed")


def cell_means(d: np.ndarray, groups) -> np.ndarray:
    """d [R, n], groups: index arrays [..., n_g] -> [..., R, G] means of d over each group."""
    means = [d[:, np.asarray(g, dtype=np.int64)].mean(-1) for g in groups]  # each [R, ...]
    return np.moveaxis(np.stack(means, -1), 0, -2)


def _diag_off(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    C = M.shape[-1]
    diag = np.trace(M, axis1=-2, axis2=-1) / C
    off = (M.sum((-2, -1)) - diag * C) / (C * (C - 1))
    return diag, off


def specificity(d: np.ndarray, groups) -> np.ndarray:
    diag, off = _diag_off(cell_means(d, groups))
    return diag - off


def permutation_null(d: np.ndarray, groups: list[np.ndarray], n: int, rng: np.random.Generator,
                     batch: int = 256) -> np.ndarray:
    """[n] specificity with the prompts' group labels randomly permuted (group sizes kept)."""
    pool = np.concatenate(groups)
    cuts = np.cumsum([len(g) for g in groups])[:-1]
    out = []
    for start in range(0, n, batch):
        perm = rng.permuted(np.broadcast_to(pool, (min(batch, n - start), len(pool))), axis=1)
        out.append(specificity(d, np.split(perm, cuts, axis=1)))
    return np.concatenate(out)


def _summaries(d: np.ndarray, d_random: np.ndarray | None, groups) -> dict[str, np.ndarray]:
    diag, off = _diag_off(cell_means(d, groups))
    out = {"specificity": diag - off, "mean_diagonal": diag, "mean_offdiagonal": off,
           "transfer_ratio": np.where(diag != 0, off / np.where(diag != 0, diag, 1.0), np.nan)}
    if d_random is not None:
        r_diag, _ = _diag_off(cell_means(d_random, groups))
        out["random_mean_diagonal"] = r_diag
        out["beats_random"] = diag - r_diag
    return out


def transfer_statistics(d: np.ndarray, labels: np.ndarray, d_random: np.ndarray | None, n_permutations: int,
                        n_bootstrap: int, ci_level: float, seed: int) -> dict:
    """Statistics, permutation p-value and bootstrap CIs; ``labels[i]`` = row of d that is prompt i's category."""
    C = d.shape[0]
    groups = [np.flatnonzero(labels == c) for c in range(C)]
    if C < 2 or any(len(g) == 0 for g in groups):
        raise ConfigError(f"the transfer statistic needs >= 2 categories with circuits and held-out toxic prompts "
                          f"(got {C} with prompt counts {[len(g) for g in groups]})")
    obs = {k: float(v) for k, v in _summaries(d, d_random, groups).items()}
    null = permutation_null(d, groups, n_permutations, np.random.default_rng(seed))
    p_value = (1 + int(np.sum(null >= obs["specificity"] - 1e-12 * abs(obs["specificity"])))) / (1 + len(null))
    with warnings.catch_warnings():  # a ratio with a zero diagonal in every draw is NaN: its CI is NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = (bootstrap(groups, lambda s: _summaries(d, d_random, s), n_bootstrap, ci_level, seed + 1)
              if n_bootstrap else {})
    return {**obs, "p_value": float(p_value), "n_permutations": n_permutations, "null_mean": float(np.mean(null)),
            "ci": {k: {"level": ci_level, "low": float(v["low"]), "high": float(v["high"])} for k, v in ci.items()},
            "n_prompts": [len(g) for g in groups]}


@dataclass(frozen=True)
class TransferRule:
    alpha: float = 0.05
    modular_max_transfer: float = 0.5
    monolithic_min_transfer: float = 0.8

    def __post_init__(self):
        for name, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"evaluation.transfer.{name}={v!r} is not valid; use a number in [0, 1]")
        if self.modular_max_transfer > self.monolithic_min_transfer:
            raise ConfigError(f"evaluation.transfer.modular_max_transfer={self.modular_max_transfer} is above "
                              f"monolithic_min_transfer={self.monolithic_min_transfer}; it must not be")

    def decide(self, stats: dict) -> dict:
        diag, rho, p = stats["mean_diagonal"], stats["transfer_ratio"], stats["p_value"]
        beat = stats.get("ci", {}).get("beats_random")
        beats_random = None if beat is None else bool(beat["low"] > 0)
        if not diag > 0 or beats_random is False:
            verdict = "inconclusive"
        elif p <= self.alpha and rho <= self.modular_max_transfer:
            verdict = "modular"
        elif p > self.alpha and rho >= self.monolithic_min_transfer:
            verdict = "monolithic"
        else:
            verdict = "mixed"
        return {"verdict": verdict, "rule": TRANSFER_RULE, "thresholds": asdict(self),
                "evidence": {"specificity": stats["specificity"], "p_value": p, "transfer_ratio": rho,
                             "mean_diagonal": diag, "beats_random": beats_random}}


def combine(discovery: str | None, transfer: str | None) -> dict:
    """The final verdict from the discovery verdict (similarity statistics) and the transfer verdict (causal)."""
    decisive = ("modular", "monolithic")
    if transfer in (None, "inconclusive"):
        if discovery is None:
            return {"verdict": None, "basis": "no evidence: neither discovery nor transfer results"}
        why = "transfer was not run" if transfer is None else "the transfer test was inconclusive"
        return {"verdict": discovery, "basis": f"discovery statistics only (correlational; {why})"}
    if discovery is None:
        return {"verdict": transfer, "basis": "transfer test only (no discovery verdict)"}
    if transfer == discovery:
        return {"verdict": transfer, "basis": "discovery and transfer agree"}
    if transfer in decisive and discovery == "mixed":
        return {"verdict": transfer, "basis": "causal transfer test decides where discovery was mixed"}
    return {"verdict": "mixed", "basis": f"discovery says {discovery}, transfer says {transfer}"}


def clean(obj):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj
