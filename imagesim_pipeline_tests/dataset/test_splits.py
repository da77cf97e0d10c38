"""Spatial-block splits: whole blocks, stable, in the asked proportions."""

from __future__ import annotations

from collections import Counter

import pytest

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.dataset.splits import (
    block_of,
    check_fractions,
    footprint_of,
    split_of,
)

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_block_is_the_ancestor_cell():
    chip = "Z35-01313311111323212_KOTKAA.jpg"
    footprint = footprint_of(chip)
    assert footprint == "Z35-01313311111323212"
    assert block_of(footprint, 15) == ArdCell.parse(footprint).ancestor(15).id == "Z35-013133111113232"
    with pytest.raises(ValueError, match="coarser than the block zoom"):
        block_of("Z35-0131", 15)


def test_split_shares_follow_the_fractions_and_the_seed_reshuffles():
    blocks = [c.id for c in ArdCell.parse("Z35-0131331").children(13)]
    blocks += [c.id for c in ArdCell.parse("Z35-01313311").children(14)]
    counts = Counter(split_of(b, FRACTIONS) for b in blocks)
    n = len(blocks)
    assert n > 4000
    for name, share in FRACTIONS.items():
        assert abs(counts[name] / n - share) < 0.02
    # the seed reshuffles blocks (stability as cells are added is checked in test_build)
    assert Counter(split_of(b, FRACTIONS, seed=1) == split_of(b, FRACTIONS) for b in blocks)[False] > n * 0.2


@pytest.mark.parametrize("fractions", [{"train": 0.8, "val": 0.1}, {"train": 1.1, "val": -0.1, "test": 0.0},
                                       {"train": 0.5, "valid": 0.5}])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="split fractions"):
        check_fractions(fractions)
