"""The ``data`` config group (conf/data/): the schema of a prompt-set recipe, read by
:func:`refusal.data.build.build_prompt_set` and :func:`refusal.data.analysis.analyze_splits`."""
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from refusal.config import register


@dataclass
class DataSchema:
    seed: int = MISSING
    sources: List[Any] = MISSING  # _target_ nodes, each returning a list of PromptRecord
    taxonomy: Dict[str, Dict[str, Optional[str]]] = MISSING  # source -> {source category: common category or null}
    categories: Optional[List[str]] = MISSING
    balance: str = MISSING
    max_per_category: Any = MISSING  # an int, {label: int or null}, or null
    split_fractions: Dict[str, float] = MISSING
    min_toxic_per_category: int = MISSING


DATA_KEYS = tuple(f.name for f in fields(DataSchema))
register("data", DataSchema)
