"""Causal evaluation: interventions (SAE feature ablation/clamping/scaling with the error term kept, directional
ablation, activation addition), faithfulness and completeness of circuits, the cross-category transfer matrix and
its statistic, the refusal direction (a reference method), SAE quality on held-out prompts, and the report sections."""
from refusal.evaluation.interventions import (ActAdd, DirectionalAblation, FeatureEdit, Reconstruct, ZeroAblate,
                                              directional_ablation, intervene)

__all__ = ["ActAdd", "DirectionalAblation", "FeatureEdit", "Reconstruct", "ZeroAblate", "directional_ablation",
           "intervene"]
