"""Per-split counts of a prompt set and warnings about thin toxic categories (pure data: JSON-able)."""
from __future__ import annotations

from collections import Counter

from refusal.data.records import LABELS, SPLITS, PromptSet
from refusal.errors import ConfigError


def analyze_splits(prompt_set: PromptSet, data_cfg) -> dict:
    """{"counts": [{category, label, split, n}], "totals": {...}, "warnings": [str], "content_hash": str}.

    Counts cover every category x label present in the set and every split (zeros included). A warning is
    given for each toxic category (every one present, plus every one in ``data.categories``) and split with
    fewer than ``data.min_toxic_per_category`` toxic prompts.
    """
    threshold = data_cfg["min_toxic_per_category"]
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ConfigError(f"data.min_toxic_per_category={threshold!r} is not valid; use an int >= 0")
    n = Counter((r.category, r.label, r.split) for r in prompt_set)
    strata = sorted({(r.category, r.label) for r in prompt_set}, key=lambda k: (k[0], LABELS.index(k[1])))
    counts = [{"category": c, "label": lb, "split": s, "n": n[(c, lb, s)]} for c, lb in strata for s in SPLITS]

    toxic_categories = set(prompt_set.categories(label="toxic"))
    wanted = data_cfg.get("categories") if hasattr(data_cfg, "get") else None
    if wanted is not None:
        toxic_categories |= {wanted} if isinstance(wanted, str) else set(wanted)
    warnings = [
        f"category {c!r} has {n[(c, 'toxic', s)]} toxic prompts in split {s!r} (< {threshold})"
        for c in sorted(toxic_categories) for s in SPLITS if n[(c, "toxic", s)] < threshold
    ]
    totals = {
        "prompts": len(prompt_set),
        "by_split": {s: sum(1 for r in prompt_set if r.split == s) for s in SPLITS},
        "by_label": {lb: sum(1 for r in prompt_set if r.label == lb) for lb in LABELS},
        "by_split_label": {s: {lb: sum(v for (_, lb2, s2), v in n.items() if s2 == s and lb2 == lb)
                               for lb in LABELS} for s in SPLITS},
    }
    return {"counts": counts, "totals": totals, "warnings": warnings, "content_hash": prompt_set.content_hash()}
