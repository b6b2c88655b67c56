"""Under DDP each rank gets a disjoint share of the epoch's seeded draws with the same target proportions."""
import numpy as np

from refusal.activations.sampler import draw_rows, row_weights


def test_ranks_split_the_draws_disjointly_and_keep_the_weights():
    rng = np.random.default_rng(0)
    is_toxic = rng.random(600) < 0.2  # toxic is rare: balancing must lift it to half the mass
    category = rng.integers(0, 3, 600)
    w = row_weights(is_toxic, category, balance_safe_toxic=True, use_category_weights=True)
    single = draw_rows(w, 20_000, seed=3, epoch=1)
    ranks = [draw_rows(w, 20_000, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert [len(r) for r in ranks] == [10_000, 10_000]
    merged = np.empty_like(single)
    merged[0::2], merged[1::2] = ranks
    assert np.array_equal(merged, single)  # every draw goes to exactly one rank, none is lost or repeated
    for rows in ranks:
        assert abs(is_toxic[rows].mean() - 0.5) < 0.02  # balanced toxic / non-toxic
        for c in range(3):  # each category an equal share inside the toxic class
            assert abs((category[rows][is_toxic[rows]] == c).mean() - 1 / 3) < 0.03
    assert not np.array_equal(ranks[0], ranks[1])
