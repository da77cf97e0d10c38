"""Rendering in strips and windows: the same pixels as in one piece, no seams; change ground truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from imagesim_pipeline.ard.grid import cells_covering
from imagesim_pipeline.demo.features import load_layers
from imagesim_pipeline.demo.render import (
    ROOF0,
    Scene,
    global_origin,
    pixel_noise,
    smooth_noise,
    to_utm,
    vanished,
)
from imagesim_pipeline.demo.world import (
    ACQUISITIONS,
    SYNTHETIC_RESOLUTION,
    region_changes,
    render_rgb,
    synthetic_region,
    write_render,
)

SEED = 3


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """A 1.25 km synthetic region (only its extract is generated here)."""
    return synthetic_region(tmp_path_factory.mktemp("region"), 1.25, seed=SEED)


@pytest.fixture(scope="module")
def layers(region):
    return load_layers(region.pbf)


def test_noise_depends_only_on_the_global_pixel():
    whole = pixel_noise(9, 1, (1000, 1700), (500, 1400))
    part = pixel_noise(9, 1, (1250, 1300), (777, 1001))  # across tile borders
    assert np.array_equal(part, whole[250:300, 277:501])
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1) < 0.05
    smooth = smooth_noise(9, 2, (1000, 500), (700, 900), 48, 7.0)
    assert np.array_equal(smooth_noise(9, 2, (1250, 777), (50, 224), 48, 7.0), smooth[250:300, 277:501])
    assert not np.array_equal(pixel_noise(9, 1, (0, 64), (0, 64)), pixel_noise(10, 1, (0, 64), (0, 64)))


def test_strips_and_windows_give_the_same_pixels_as_one_piece(region, layers, tmp_path):
    features = to_utm(layers.geoms, region.epsg)
    res = SYNTHETIC_RESOLUTION
    xmin, ymin = region.bounds[:2]
    bounds = (xmin + 300 * res, ymin + 600 * res, xmin + 700 * res, ymin + 900 * res)  # 400 x 300 px
    look = ACQUISITIONS[1][2]
    scene = Scene.build(features, look, 11, layers.building_heights, world_seed=SEED)
    whole = render_rgb(scene, look, 11, bounds, res, 0, 300)
    assert whole.shape == (3, 300, 400) and whole.min() >= 1
    pieces = [render_rgb(scene, look, 11, bounds, res, r, min(37, 300 - r)) for r in range(0, 300, 37)]
    assert np.array_equal(np.concatenate(pieces, axis=1), whole)
    # A window shifted by whole pixels sees the same ground the same way (columns too).
    shifted = (bounds[0] + 50 * res, bounds[1], bounds[2] + 50 * res, bounds[3])
    assert np.array_equal(render_rgb(scene, look, 11, shifted, res, 0, 300)[:, :, :350], whole[:, :, 50:])
    # And the GeoTIFF written strip by strip holds exactly those pixels, georeferenced.
    path = tmp_path / "strips.tif"
    write_render(path, scene, look, 11, region.epsg, bounds, res, strip_rows=64)
    with rasterio.open(path) as src:
        assert np.array_equal(src.read(), whole)
        assert src.transform.c == pytest.approx(bounds[0]) and src.transform.f == pytest.approx(bounds[3])
        assert src.crs.to_epsg() == region.epsg and src.nodata == 0


def test_rendering_is_deterministic_for_a_seed(region, layers):
    features = to_utm(layers.geoms, region.epsg)
    res = SYNTHETIC_RESOLUTION
    xmin, ymin = region.bounds[:2]
    bounds = (xmin, ymin, xmin + 200 * res, ymin + 200 * res)
    look = ACQUISITIONS[0][2]

    def render(seed: int) -> np.ndarray:
        return render_rgb(Scene.build(features, look, seed, layers.building_heights), look, seed, bounds, res, 0, 200)

    assert np.array_equal(render(5), render(5)) and not np.array_equal(render(5), render(6))


def test_buildings_keep_their_roofs_across_acquisitions(region, layers):
    """Only vanished buildings change: a standing roof has the same colour in every acquisition."""
    features = to_utm(layers.geoms, region.epsg)
    looks = [dataclasses.replace(look, shift_m=(0.0, 0.0)) for _, _, look in ACQUISITIONS]
    xmin, ymin, xmax, ymax = region.bounds
    origin = (xmin, ymax)
    shape = (int((ymax - ymin) / 0.5), int((xmax - xmin) / 0.5))
    a, b = (Scene.build(features, look, SEED * 1000 + i, layers.building_heights, world_seed=SEED)
            .classes(*origin, 0.5, shape) for i, look in enumerate(looks))
    both = (a >= ROOF0) & (b >= ROOF0)
    assert both.sum() > 10_000 and np.array_equal(a[both], b[both])
    assert ((b >= ROOF0) & (a < ROOF0)).sum() == 0  # nothing appears


def test_change_ground_truth_lists_exactly_the_places_whose_buildings_vanished(region, layers):
    rows = region_changes(region, SEED, layers)
    assert rows, "a 1.25 km area should lose a few buildings"
    (before, day_before, look_a), (after, day_after, look_b) = ACQUISITIONS
    # From the feature list, by brute force over every place of the area.
    buildings = to_utm({"building": layers.geoms["building"]}, region.epsg)["building"]
    gone = ~vanished(len(buildings), look_a, SEED * 1000) & vanished(len(buildings), look_b, SEED * 1000 + 1)
    area = box(*region.bounds)
    expected = {}
    for place in cells_covering(area, region.epsg, 17):
        cell_box = box(*place.bounds)
        ids = sorted(layers.building_ids[i] for i in np.flatnonzero(gone)
                     if buildings[i].intersection(cell_box).intersection(area).area > 0)
        if ids:
            expected[place.id] = ids
    assert {r["place"]: r["osm_ids"] for r in rows} == expected
    for r in rows:
        assert r["vanished_buildings"] == len(r["osm_ids"]) and r["vanished_area_m2"] > 0
        assert r["catalog_id_before"] == f"SYNTH{before}" and r["catalog_id_after"] == f"SYNTH{after}"
        assert (r["date_before"], r["date_after"]) == (day_before, day_after)
        assert r["cell"] == r["place"][:16] and len(r["place"]) == 4 + 17
    # Against the pixels (without misregistration): roof pixels that go away lie in listed places,
    # and every listed place with more than a few square metres gone loses roof pixels.
    looks = [dataclasses.replace(look, shift_m=(0.0, 0.0)) for look in (look_a, look_b)]
    xmin, ymin, xmax, ymax = region.bounds
    res = 0.5
    shape = (int((ymax - ymin) / res), int((xmax - xmin) / res))
    features = to_utm(layers.geoms, region.epsg)
    a, b = (Scene.build(features, look, SEED * 1000 + i, layers.building_heights, world_seed=SEED)
            .classes(xmin, ymax, res, shape) for i, look in enumerate(looks))
    lost = (a >= ROOF0) & (b < ROOF0)
    per_place = {}
    for place in cells_covering(area, region.epsg, 17):
        px0, py0, px1, py1 = place.bounds
        c0, c1 = round((px0 - xmin) / res), round((px1 - xmin) / res)
        r0, r1 = round((ymax - py1) / res), round((ymax - py0) / res)
        per_place[place.id] = int(lost[r0:r1, c0:c1].sum())
    assert {p for p, n in per_place.items() if n} <= set(expected)
    assert all(per_place[r["place"]] > 0 for r in rows if r["vanished_area_m2"] >= 5)
    # And the render's global pixel grid is the ARD cell grid here.
    assert global_origin(xmin, ymax, SYNTHETIC_RESOLUTION)[1] * SYNTHETIC_RESOLUTION == pytest.approx(
        xmin - (500_000 - 10_240_000))
