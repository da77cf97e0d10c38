"""Change scores: robust normalisation within groups, and pairs from real embeddings."""

from __future__ import annotations

import numpy as np

from imagesim_pipeline.changes.detect import robust_scores


def test_scores_make_places_of_different_kinds_comparable():
    rng = np.random.default_rng(0)
    fields = rng.normal(0.30, 0.05, 200)  # fields change colour a lot between seasons
    roofs = rng.normal(0.05, 0.01, 200)  # roofs hardly
    distance = np.r_[fields, roofs, 0.12]  # a roof place that changed: small in raw terms
    kind = np.array(["field"] * 200 + ["roof"] * 201, dtype=object)
    score = robust_scores(distance, [kind])
    assert distance[-1] < np.median(fields)  # raw distance would rank it below a typical field
    assert score[-1] > 5 and score[-1] > score[:200].max()  # normalised, it stands out


def test_small_groups_fall_back_to_coarser_ones():
    distance = np.r_[np.linspace(0, 1, 50), 0.5]
    fine = np.array(["a"] * 50 + ["tiny"], dtype=object)
    coarse = np.zeros(51, dtype=np.int64)
    score = robust_scores(distance, [fine, coarse], min_group=30)
    assert np.isfinite(score).all()
    assert abs(score[-1]) < 0.1  # scored against all 51 rows (median 0.5), not alone (which would give 0/0)
