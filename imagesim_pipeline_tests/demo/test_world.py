"""The demo world: rendered from the real extracts, deterministic, and true to the OSM classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from shapely.geometry import Point

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.demo.features import load_features
from imagesim_pipeline.demo.render import (
    FOREST,
    ROOF0,
    SHADOW,
    WATER,
    Look,
    class_raster,
    colourise,
    to_utm,
)
from imagesim_pipeline.demo.world import (
    ACQUISITIONS,
    SYNTHETIC_RESOLUTION,
    WORLD_KEY,
    build_world,
    synthetic_region,
)
from imagesim_pipeline.demo.truth import read_changes
from imagesim_pipeline.storage import layout, open_bucket

EPSG = 32635


@pytest.fixture(scope="module")
def helsinki(samples):
    return to_utm(load_features(samples["Helsinki.osm.pbf"]), EPSG)


def small_box(features, kind: str, size: float = 300.0):
    centre = max(features[kind], key=lambda g: g.area).representative_point()
    return (centre.x - size / 2, centre.y - size / 2, centre.x + size / 2, centre.y + size / 2)


def test_world_passes_discovery_with_two_acquisitions_per_cell(world):
    root, cells = world
    found = discover_bucket(open_bucket(root))
    assert found.problems == [] and found.cell_ids == cells and len(cells) >= 3
    for delivery in found.cells.values():
        assert len(delivery.acquisitions) == 2
        assert len(set(delivery.dates)) == 2 and len({a.catalog_id for a in delivery.acquisitions}) == 2
        assert all(set(a.assets) == {"visual", "data-mask", "stac"} for a in delivery.acquisitions)


def test_cells_have_a_no_data_region_beyond_the_extract(world):
    root, _ = world
    bucket = open_bucket(root)
    acq = discover_bucket(bucket).cells["Z35-013133103003"].acquisitions[0]
    with rasterio.open(bucket.gdal_path(acq.visual_key)) as src:
        valid = src.dataset_mask(out_shape=(256, 256)) > 0
    assert 0.02 < valid.mean() < 0.5  # the 1 x 1.7 km extract inside a 5 x 5 km cell


def test_rendering_is_deterministic(helsinki):
    bounds = small_box(helsinki, "building")
    look = ACQUISITIONS[1][2]
    a = colourise(class_raster(helsinki, bounds, 0.5, look, 11), look, 11)
    b = colourise(class_raster(helsinki, bounds, 0.5, look, 11), look, 11)
    c = colourise(class_raster(helsinki, bounds, 0.5, look, 12), look, 12)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("kind, cid", [("water", WATER), ("forest", FOREST)])
def test_pixels_agree_with_osm_classes_at_sampled_points(helsinki, kind, cid):
    bounds = small_box(helsinki, kind)
    look = Look()
    classes = class_raster(helsinki, bounds, 0.5, look, 3)
    rgb = colourise(classes, look, 3).astype(int)
    # Sample points inside the largest polygon of that class (away from its edges).
    inner = max(helsinki[kind], key=lambda g: g.area).buffer(-2)
    rng = np.random.default_rng(0)
    hits = 0
    xmin, ymin, xmax, ymax = bounds
    transform = rasterio.transform.from_origin(xmin, ymax, 0.5, 0.5)
    ixmin, iymin, ixmax, iymax = inner.bounds
    for _ in range(3000):
        x, y = rng.uniform(ixmin, ixmax), rng.uniform(iymin, iymax)
        if not inner.contains(Point(x, y)):
            continue
        row, col = rasterio.transform.rowcol(transform, x, y)
        if classes[row, col] >= SHADOW or classes[row, col] in (7, 8, 9, 10):  # drawn over: buildings, roads
            continue
        hits += 1
        assert classes[row, col] == cid
        r, g, b = rgb[:, row, col]
        if kind == "water":
            assert b > r and max(r, g, b) < 140
        else:
            assert g > r and g > b - 10
    assert hits >= 15


def test_second_acquisition_differs_the_way_real_ones_do(helsinki):
    bounds = small_box(helsinki, "building", 600)
    (_, _, summer), (_, _, autumn) = ACQUISITIONS
    first = class_raster(helsinki, bounds, 0.5, summer, 5)
    second = class_raster(helsinki, bounds, 0.5, autumn, 5)
    roofs_first, roofs_second = (first >= ROOF0).sum(), (second >= ROOF0).sum()
    assert roofs_second < roofs_first  # a few buildings vanished
    shadow_first, shadow_second = (first == SHADOW).sum(), (second == SHADOW).sum()
    assert shadow_second > shadow_first  # a lower sun casts longer shadows
    a, b = colourise(first, summer, 5), colourise(second, autumn, 5)
    assert abs(a.mean() - b.mean()) > 3  # haze and season tint


def test_world_records_its_change_ground_truth(world):
    root, cells = world
    bucket = open_bucket(root)
    changes = read_changes(bucket).to_pylist()
    found = discover_bucket(bucket)
    acquisitions = {a.catalog_id for d in found.cells.values() for a in d.acquisitions}
    assert {r["region"] for r in changes} == {"HELSINKI", "KOTKA"}
    for r in changes:
        assert r["cell"] in cells and r["place"].startswith(r["cell"]) and len(r["place"]) == 4 + 17
        assert {r["catalog_id_before"], r["catalog_id_after"]} <= acquisitions
        assert r["vanished_buildings"] == len(r["osm_ids"]) >= 1 and 0 < r["vanished_share"] <= 1
    assert len({r["place"] for r in changes}) == len(changes)
    world_doc = json.loads(bucket.read_text(WORLD_KEY))
    assert [r["name"] for r in world_doc["regions"]] == ["HELSINKI", "KOTKA"]
    assert sum(r["changed_places"] for r in world_doc["regions"]) == len(changes)


def test_synthetic_area_lands_on_the_cell_grid_all_data(tmp_path):
    """The procedural area, rendered by two worker processes: whole chips of valid data, nodata beyond."""
    region = synthetic_region(tmp_path, 0.625, seed=2)  # one 625 m block: 16 chip places
    bucket = open_bucket(tmp_path / "bucket")
    cells = build_world(bucket, [region], seed=2, progress=lambda m: None, workers=2)
    found = discover_bucket(bucket)
    assert cells and found.cell_ids == cells and found.problems == []
    assert all(len(d.acquisitions) == 2 for d in found.cells.values())
    assert bucket.read_bytes(layout.SYNTHETIC_OSM_KEY) == region.pbf.read_bytes()  # osm_data reads it there
    xmin, ymin, xmax, ymax = region.bounds
    for delivery in found.cells.values():
        for acq in delivery.acquisitions:
            with rasterio.open(bucket.gdal_path(acq.visual_key)) as src:
                assert src.res[0] == pytest.approx(SYNTHETIC_RESOLUTION)
                window = rasterio.windows.from_bounds(xmin, ymin, xmax, ymax, src.transform).round_offsets()
                window = window.round_lengths()
                inside = src.dataset_mask(window=window)
                ring = src.dataset_mask(window=rasterio.windows.Window(
                    window.col_off - 2, window.row_off - 2, window.width + 4, window.height + 4))
            assert inside.shape == (1264, 1264) and inside.all()  # 625 m at 5000 / 10112 m
            assert ring.sum() == inside.sum()  # nothing valid beyond the area
    assert isinstance(read_changes(bucket).to_pylist(), list)
