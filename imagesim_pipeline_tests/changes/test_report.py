"""The figures shown beside the change-score histogram."""

import numpy as np
import pytest

from imagesim_pipeline.changes.report import score_summary


def test_score_summary_leaves_out_unscored_pairs():
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.nan, np.inf])
    summary = score_summary(scores)
    assert summary["scored"] == 5
    assert summary["median"] == 2.0
    assert summary["max"] == 4.0
    assert summary["p90"] == pytest.approx(3.6)


def test_score_summary_of_nothing_scored():
    assert score_summary(np.array([np.nan])) == {"scored": 0}
