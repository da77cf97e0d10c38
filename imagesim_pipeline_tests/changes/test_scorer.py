"""The feature-map change scorer on real aerial pixels (``change-pairs``, see its README) and on
synthetic feature maps for the numpy half (matching, aggregation) that an ONNX model could feed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataclasses import replace

from imagesim_pipeline.changes.scorer import (DEFAULT_PARAMS, FeatureExtractor, _best_match, _unit_centred, aggregate,
                                              change_map, feature_distance, pixel_distance, pixel_envelope_distance,
                                              score_pair, shadow_mask)

PAIRS = Path(os.environ.get("IMAGESIM_CHANGE_PAIRS",
                            Path(__file__).resolve().parents[3] / "shared" / "data" / "change-pairs"))


def _rgb(rel: str) -> np.ndarray:
    return np.asarray(Image.open(PAIRS / rel).convert("RGB"))


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor()  # the real offline ImageNet weights


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return _rgb("levir/A/test_2_0000_0000.png")  # 256 x 256 at 0.5 m: houses, roads, bare ground


@pytest.fixture(scope="module")
def pasted(scene, extractor) -> tuple[np.ndarray, float, np.ndarray]:
    """The scene with a 48 x 48 square of other ground (a DSIFN village at 2 m) pasted in its middle."""
    after = scene.copy()
    after[104:152, 104:152] = _rgb("dsifn/B/0_2.png")[20:68, 20:68]
    score, change = score_pair(scene, after, extractor)
    return after, score, change


def _far_from_square(margin: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[:256, :256]
    return np.maximum(np.abs(yy - 127.5), np.abs(xx - 127.5)) > 24 + margin


def test_identical_images_score_zero_everywhere(scene, extractor):
    score, change = score_pair(scene, scene, extractor)
    assert change.shape == scene.shape[:2] and change.dtype == np.float32
    assert score < 1e-3
    assert np.abs(change).max() < 1e-3


def test_a_pasted_square_is_found_where_it_is(scene, extractor, pasted):
    _, score, change = pasted
    inside = change[112:144, 112:144]  # the square less 8 px at its edges
    far = change[_far_from_square()]
    assert inside.mean() > 0.4 and np.quantile(inside, 0.1) > 0.25
    assert far.mean() < 0.05 and far.max() < 0.15
    assert inside.mean() > 8 * far.mean()
    identical, _ = score_pair(scene, scene, extractor)
    assert score > identical + 0.2


def test_global_brightness_and_colour_shifts_score_low(scene, extractor, pasted):
    _, pasted_score, _ = pasted
    brighter = np.clip(scene.astype(np.float32) * 1.2 + 10, 0, 255).astype(np.uint8)
    tinted = np.clip(scene.astype(np.float32) * np.array([1.15, 1.0, 0.8]), 0, 255).astype(np.uint8)
    darker = (scene.astype(np.float32) * 0.7 + 5).astype(np.uint8)
    for after in (brighter, tinted, darker):
        score, change = score_pair(scene, after, extractor)
        assert score < 0.3 * pasted_score, score
        assert change.mean() < 0.05


def test_map_has_the_input_size_for_any_size(extractor):
    before = _rgb("dsifn/A/1_1.png")[:201, 7:190]  # 201 x 183: not a multiple of any stride
    after = _rgb("dsifn/B/1_1.png")[:201, 7:190]
    score, change = score_pair(before, after, extractor)
    assert change.shape == (201, 183)
    assert np.isfinite(change).all() and np.isfinite(score) and score > 0


def test_inputs_are_checked(scene, extractor):
    with pytest.raises(ValueError, match="differ in size"):
        score_pair(scene, scene[:128], extractor)
    with pytest.raises(ValueError, match="uint8"):
        score_pair(scene.astype(np.float32), scene, extractor)


def test_matching_tolerates_a_shift_of_one_cell():
    rng = np.random.default_rng(0)
    before = rng.normal(size=(16, 20, 20)).astype(np.float32)
    after = np.roll(before, 1, axis=2)  # the same features, misregistered by one cell
    interior = (slice(2, -2), slice(2, -2))
    assert feature_distance(before, before, radius=1).max() < 1e-5
    assert feature_distance(before, after, radius=0)[interior].mean() > 0.7  # unmatched: looks changed
    matched = feature_distance(before, after, radius=1, penalty=0.2)
    assert np.allclose(matched[interior], 0.2, atol=1e-4)  # found next door, at the penalty's cost


def test_matching_keeps_a_new_object_that_one_direction_would_hide():
    rng = np.random.default_rng(1)
    road, ground, new = (rng.normal(size=(16, 1, 1)).astype(np.float32) for _ in range(3))
    before = np.where(np.arange(12) < 6, road, ground) + 0.05 * rng.normal(size=(16, 12, 12)).astype(np.float32)
    after = before.copy()
    after[:, 6, 9] = new[:, 0, 0]  # a new object on one cell of ground
    d = feature_distance(before, after, radius=1, penalty=0.0)
    assert d[6, 9] > 0.8
    assert np.delete(d.ravel(), 6 * 12 + 9).max() < 0.01
    # before -> after alone finds ground next to the object: the smaller direction would hide it
    ua, ub = _unit_centred(before), _unit_centred(after)
    assert _best_match(ua, ub, 1, 0.0)[6, 9] < 0.05 and _best_match(ub, ua, 1, 0.0)[6, 9] > 0.8


def test_change_map_takes_numpy_feature_maps_of_any_stride():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8)
    coarse = rng.normal(size=(8, 4, 6)).astype(np.float32)  # stride 16
    fine = rng.normal(size=(4, 16, 24)).astype(np.float32)  # stride 4
    same = change_map([fine, coarse], [fine, coarse], image, image)
    assert same.shape == (64, 96) and np.abs(same).max() < 1e-5
    other = change_map([fine, coarse], [rng.normal(size=fine.shape), rng.normal(size=coarse.shape)], image, image)
    assert other.shape == (64, 96) and other.mean() > 0.5


def test_pixel_cue_ignores_gain_and_offset_but_sees_new_content(scene):
    before = scene[:96, :96]
    shifted = np.clip(before.astype(np.float32) * np.array([1.2, 0.9, 1.0]) + 12, 0, 255).astype(np.uint8)
    assert pixel_distance(before, shifted).max() < 0.02
    changed = before.copy()
    changed[32:64, 32:64] = _rgb("dsifn/B/0_2.png")[20:52, 20:52]
    d = pixel_distance(before, changed)
    assert d[38:58, 38:58].mean() > 0.2
    assert d[:16, :16].max() < 0.05 and d[80:, 80:].max() < 0.05


def test_envelope_cue_filters_uint8_pixels_exactly_as_the_standardised_colours(scene):
    """The envelope's min/max filters run on the uint8 pixels and are standardised afterwards: the result
    must be what filtering the standardised colours gives (scipy's filters, edges replicated)."""
    from scipy.ndimage import gaussian_filter, maximum_filter, minimum_filter

    before = scene[:96, :128]
    after = scene[8:104, 16:144]  # shifted content: every pixel has a distance to explain

    def standardise(img):
        f = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
        return (f - f.mean(axis=(1, 2), keepdims=True)) / (f.std(axis=(1, 2), keepdims=True) + 1.0)

    def outside(x, y):
        below = np.maximum(minimum_filter(y, size=(1, 5, 5), mode="nearest") - x, 0)
        above = np.maximum(x - maximum_filter(y, size=(1, 5, 5), mode="nearest"), 0)
        return (below ** 2 + above ** 2).sum(0)

    def expected(x, y):
        a, b = standardise(x), standardise(y)
        return gaussian_filter(np.sqrt(np.maximum(outside(a, b), outside(b, a))) / (2 * np.sqrt(3)), 2.0,
                               mode="reflect", truncate=4.0)

    got = pixel_envelope_distance(before, after, radius=2, sigma=2.0)
    assert got.shape == (96, 128) and got.max() > 0.1
    np.testing.assert_allclose(got, expected(before, after), rtol=1e-5, atol=1e-6)
    as_float = pixel_envelope_distance(before.astype(np.float32), after.astype(np.float32), radius=2, sigma=2.0)
    np.testing.assert_array_equal(as_float, got)  # float pixels take the float path: the same map
    jitter = np.random.default_rng(3).uniform(-0.49, 0.49, before.shape)  # fractional values are not rounded
    np.testing.assert_allclose(pixel_envelope_distance(before + jitter, after, radius=2, sigma=2.0),
                               expected(before + jitter, after), rtol=1e-5, atol=1e-6)


def test_score_is_a_top_fraction_so_small_changes_count():
    change = np.zeros((100, 100), np.float32)
    change[:5] = 1.0  # 5 % of the chip changed
    assert aggregate(change, 0.1) == pytest.approx(0.5)
    assert change.mean() == pytest.approx(0.05)  # what a mean would have given
    assert aggregate(np.full((4, 4), 0.3, np.float32), 0.1) == pytest.approx(0.3)


def test_shadow_mask_marks_pixels_darker_than_the_level_of_either_image(scene):
    cast = scene.copy()
    cast[40:80, 40:120] = (scene[40:80, 40:120] * 0.3).astype(np.uint8)  # a shadow falls on the ground
    mask = shadow_mask(scene, cast, level=0.55)
    assert mask.shape == scene.shape[:2] and mask.dtype == np.float32
    assert mask[45:75, 45:115].mean() > 0.9  # the new shadow (darker than 0.55 x the median luminance)
    assert np.array_equal(shadow_mask(scene, cast), shadow_mask(cast, scene))  # either image's shadows count
    dim = (scene.astype(np.float32) * 0.5).astype(np.uint8)  # a darker exposure is not a shadow
    assert np.abs(shadow_mask(scene, dim) - shadow_mask(scene, scene)).mean() < 0.01


def test_shadow_damping_lowers_a_moved_shadow_and_keeps_a_new_sunlit_object(scene, extractor):
    cast = scene.copy()
    cast[104:152, 104:152] = (scene[104:152, 104:152] * 0.3).astype(np.uint8)  # a longer shadow, nothing else
    new = scene.copy()
    new[104:152, 104:152] = _rgb("dsifn/B/0_2.png")[20:68, 20:68]  # new sunlit ground
    damped = replace(DEFAULT_PARAMS, shadow_weight=0.5)
    shadow_plain, _ = score_pair(scene, cast, extractor)
    shadow_damped, shadow_map = score_pair(scene, cast, extractor, damped)
    new_plain, _ = score_pair(scene, new, extractor)
    new_damped, _ = score_pair(scene, new, extractor, damped)
    assert shadow_damped < 0.75 * shadow_plain  # the shadow is the whole change (its blurred rim is not damped)
    assert new_damped > 0.9 * new_plain  # the sunlit change keeps its score
    assert shadow_map.shape == scene.shape[:2]


def test_scorer_parameters_are_checked_and_fingerprinted():
    with pytest.raises(ValueError, match="shadow_weight"):
        replace(DEFAULT_PARAMS, shadow_weight=1.5)  # would turn the map negative in shadows
    with pytest.raises(ValueError, match="shadow_level"):
        replace(DEFAULT_PARAMS, shadow_level=0.0)
    assert replace(DEFAULT_PARAMS, pixel_weight=1).fingerprint == replace(DEFAULT_PARAMS, pixel_weight=1.0).fingerprint
    assert replace(DEFAULT_PARAMS, shadow_weight=0.5).fingerprint != DEFAULT_PARAMS.fingerprint
