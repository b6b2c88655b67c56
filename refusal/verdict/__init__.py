"""The layer-resolved verdict (DESIGN §4): is refusal carried by a shared bottleneck, by category-specific parts,
or both? Pure numpy/scipy on per-prompt refusal scores, no model.

inputs (the checked scores of one layer) -> evidence (headroom, residual refusal, drop matrix, dissociation, with
bootstrap CIs; resample does the bootstrap, power the resolution) -> rules (LayerRule: monolithic / modular / mixed /
inconclusive per layer) -> profile (the model's answer along depth, and its stability over runs) -> final (the run's
verdict.json, with recognition and transfer attached as descriptive evidence).
"""
from refusal.verdict.evidence import layer_evidence
from refusal.verdict.final import final_verdict
from refusal.verdict.profile import MODEL_RULE, model_verdict, stability
from refusal.verdict.rules import RULE, LayerRule

__all__ = ["LayerRule", "MODEL_RULE", "RULE", "final_verdict", "layer_evidence", "model_verdict", "stability"]
