"""Chip pairs scored with the published model's feature maps: what the pipeline's change table runs.

On a real demo chip: a pair of identical chips scores zero, a pasted square lights the map up where
it was pasted and raises the score, a global brightness and colour shift scores low; and the maps
from model.onnx give the same change map as the torch extractor behind ``score_pair``.
"""

from __future__ import annotations

import numpy as np
import pytest

from imagesim_pipeline.changes.feature_maps import OnnxFeatureMaps
from imagesim_pipeline.changes.scorer import FeatureExtractor, aggregate, change_map, resize_bilinear
from imagesim_pipeline.changes.spatial import CHIP_PARAMS, ChipPairScorer, UnreadablePairError, decode_rgb
from imagesim_pipeline.storage import open_bucket


@pytest.fixture(scope="module")
def scorer(demo_model) -> ChipPairScorer:
    root, version = demo_model
    return ChipPairScorer(OnnxFeatureMaps.from_bucket(open_bucket(root), "smlc", version, threads=2))


@pytest.fixture(scope="module")
def chip(demo_model) -> np.ndarray:
    """A real demo chip with buildings and ground: the one with the most colour variety of the first few."""
    bucket = open_bucket(demo_model[0])
    keys = sorted(o.key for o in bucket.list("chips/") if o.key.endswith(".jpg"))[:40]
    images = [decode_rgb(bucket.read_bytes(k)) for k in keys]
    return max(images, key=lambda im: float(im.std(axis=(0, 1)).mean()))


def test_identical_chips_score_zero_everywhere(scorer, chip):
    (same,) = scorer.score_images([(chip, chip)])
    assert same.change.shape == (224, 224)  # the model's input size
    assert same.score < 1e-3 and float(same.change.max()) < 1e-3


def test_a_pasted_square_lights_up_where_it_was_pasted_and_raises_the_score(scorer, chip):
    after = chip.copy()
    y, x, side = 96, 256, 96  # a new roof: 96 px of a 512-px chip, 3.5 % of its area
    after[y:y + side, x:x + side] = (200, 60, 40)
    (same,), (pasted,) = scorer.score_images([(chip, chip)]), scorer.score_images([(chip, after)])
    change = resize_bilinear(pasted.change, *chip.shape[:2])  # back to the chip's pixels
    inside = change[y + 16:y + side - 16, x + 16:x + side - 16].mean()
    outside = np.concatenate([change[:, :x - 48].ravel(), change[y + side + 48:, :].ravel()]).mean()
    assert inside > 0.4 and inside > 4 * outside, (inside, outside)
    assert pasted.score > same.score + 0.2


def test_a_global_brightness_and_colour_shift_scores_low(scorer, chip):
    after = np.clip(chip.astype(np.float32) * [0.75, 0.8, 0.9] + 25, 0, 255).astype(np.uint8)
    pasted = chip.copy()
    pasted[96:192, 256:352] = (200, 60, 40)
    (shifted,), (real,) = scorer.score_images([(chip, after)]), scorer.score_images([(chip, pasted)])
    assert shifted.score < 0.15 and shifted.score < real.score / 4, (shifted.score, real.score)


def test_the_maps_of_model_onnx_give_the_pair_apis_change_map(scorer, chip):
    """The pipeline (the model's ONNX feature maps) and the pair API's torch extractor on the same input:
    the same map, so what the asset stores is what ``change_map`` computes in a notebook."""
    after = chip.copy()
    after[300:380, 100:180] = (40, 160, 60)
    (got,) = scorer.score_images([(chip, after)])
    small = [scorer._at_input(x) for x in (chip, after)]
    maps = FeatureExtractor(CHIP_PARAMS.blocks, upsample=1.0, normalise="imagenet")(np.stack(small))
    expected = change_map([f[0] for f in maps], [f[1] for f in maps], *small, CHIP_PARAMS)
    assert abs(aggregate(expected, CHIP_PARAMS.top_fraction) - got.score) < 1e-3
    assert np.abs(expected - got.change).max() < 1e-2


def test_an_unreadable_chip_is_an_unreadable_pair_error():
    with pytest.raises(UnreadablePairError):
        decode_rgb(b"\xff\xd8 truncated")
