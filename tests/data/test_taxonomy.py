import pytest

from refusal.data import PromptRecord
from refusal.data.taxonomy import COMMON_CATEGORIES, filter_categories, map_categories
from refusal.errors import ConfigError


def rec(i, category, label="toxic", source="src"):
    return PromptRecord(f"{source}:{i}", f"prompt {i}", category, label, source)


def test_map_identity_exclude_and_rename():
    recs = [rec(0, "hate"), rec(1, "violence"), rec(2, "copyright"), rec(3, "benign", "safe")]
    out = map_categories(recs, {"src": {"hate": "harassment", "copyright": None}})
    assert [(r.id, r.category) for r in out] == [("src:0", "harassment"), ("src:1", "violence"), ("src:3", "benign")]


def test_unmapped_source_category_is_named():
    with pytest.raises(ConfigError) as e:
        map_categories([rec(0, "weapons")], {"src": {"hate": "harassment"}})
    msg = str(e.value)
    assert "\n" not in msg and "'weapons'" in msg and "'hate'" in msg and "cybercrime" in msg


def test_map_target_must_be_common():
    with pytest.raises(ConfigError, match="'weaponry'"):
        map_categories([rec(0, "hate")], {"src": {"hate": "weaponry"}})
    with pytest.raises(ConfigError, match="'benign'"):
        map_categories([rec(0, "x", "toxic")], {"src": {"x": "benign"}})


def test_filter_keeps_benign_and_listed_categories():
    recs = [rec(0, "cbrn"), rec(1, "violence"), rec(2, "benign", "safe"), rec(3, "violence", "hard"),
            rec(4, "cbrn", "safe")]
    assert [r.id for r in filter_categories(recs, None)] == [r.id for r in recs]
    assert [r.id for r in filter_categories(recs, ["cbrn"])] == ["src:0", "src:2", "src:4"]


def test_unknown_category_in_filter_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        filter_categories([], ["cbrn", "weapons"])
    msg = str(e.value)
    assert "\n" not in msg and "'weapons'" in msg and all(c in msg for c in COMMON_CATEGORIES)
