"""Prompt data: sources, common harm taxonomy, balance, stratified splits and split analysis."""
from refusal.data.analysis import analyze_splits
from refusal.data.build import build_prompt_set
from refusal.data.records import LABELS, SPLITS, PromptRecord, PromptSet
from refusal.data.taxonomy import BENIGN, COMMON_CATEGORIES

__all__ = ["BENIGN", "COMMON_CATEGORIES", "LABELS", "SPLITS", "PromptRecord", "PromptSet", "analyze_splits",
           "build_prompt_set"]
