"""Prompt sources: each returns a list of PromptRecord (label set, category as the source names it, split
unassigned) and is used as a Hydra ``_target_`` in ``data.sources``."""
from refusal.data.sources.builtin import builtin
from refusal.data.sources.harmbench import harmbench
from refusal.data.sources.orbench import orbench
from refusal.data.sources.strongreject import strongreject
from refusal.data.sources.table import table

__all__ = ["builtin", "harmbench", "orbench", "strongreject", "table"]
