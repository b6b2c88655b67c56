import numpy as np
import pytest

from refusal.activations.sampler import draw_rows, row_weights


def _population():
    # toxic: cat 0 x 600, cat 1 x 100, cat 2 x 50; non-toxic: cat 3 x 200, cat 4 x 50
    is_toxic = np.array([True] * 750 + [False] * 250)
    cat = np.array([0] * 600 + [1] * 100 + [2] * 50 + [3] * 200 + [4] * 50)
    return is_toxic, cat


@pytest.mark.parametrize("balance,cat_weights", [(True, True), (True, False), (False, True), (False, False)])
def test_draw_proportions_match_targets(balance, cat_weights):
    is_toxic, cat = _population()
    w = row_weights(is_toxic, cat, balance, cat_weights)
    draws = draw_rows(w, 200_000, seed=0, epoch=0)
    toxic_share = is_toxic[draws].mean()
    assert toxic_share == pytest.approx(0.5 if balance else 0.75, abs=0.01)
    tox_cats = np.bincount(cat[draws][is_toxic[draws]], minlength=5)[:3] / is_toxic[draws].sum()
    want = np.array([1 / 3] * 3) if cat_weights else np.array([600, 100, 50]) / 750
    np.testing.assert_allclose(tox_cats, want, atol=0.01)
    safe_cats = np.bincount(cat[draws][~is_toxic[draws]], minlength=5)[3:] / (~is_toxic[draws]).sum()
    np.testing.assert_allclose(safe_cats, [0.5, 0.5] if cat_weights else [0.8, 0.2], atol=0.01)


def test_draws_seeded_per_epoch():
    is_toxic, cat = _population()
    w = row_weights(is_toxic, cat, True, True)
    a, b = draw_rows(w, 1000, 3, 0), draw_rows(w, 1000, 3, 0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, draw_rows(w, 1000, 3, 1))
