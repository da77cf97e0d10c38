"""Ingest of the three real sample images into the ARD layout, and of bad input."""

from __future__ import annotations

import json
from datetime import date

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import box

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.ard.grid import ArdCell, cells_covering
from imagesim_pipeline.ard.ingest import IngestError, cell_pixels, ingest
from imagesim_pipeline.samples import BAHAMAS_STRIP
from imagesim_pipeline.storage import open_bucket


def acquisitions(root):
    found = discover_bucket(open_bucket(root))
    return {a.catalog_id: a for d in found.cells.values() for a in d.acquisitions}, found


def test_visual_cogs_sit_on_the_cell_grid(ingested_bucket):
    bucket = open_bucket(ingested_bucket)
    _, found = acquisitions(ingested_bucket)
    assert len(found.cells) >= 5
    for cell_id, delivery in found.cells.items():
        cell = ArdCell.parse(cell_id)
        for acq in delivery.acquisitions:
            path = bucket.gdal_path(acq.visual_key)
            assert cog_validate(path)[0], path
            with rasterio.open(path) as src:
                assert (src.count, src.dtypes[0], src.nodata) == (3, "uint8", 0)
                assert src.crs.to_epsg() == cell.epsg
                assert src.width == src.height and src.width % 128 == 0
                # Pixel grid starts exactly at the cell's top-left corner and spans the cell.
                assert src.transform.c == cell.bounds[0] and src.transform.f == cell.bounds[3]
                assert src.width * src.res[0] == pytest.approx(cell.size)
                if src.width > 512:
                    assert src.overviews(1), "a large COG without overviews"


def test_rgb_pixels_match_the_source(ingested_bucket, samples):
    """Sample points of the deepforest orthophoto keep their colour through the reprojection."""
    acq = acquisitions(ingested_bucket)[0]["DEEPFOREST01"]
    bucket = open_bucket(ingested_bucket)
    with rasterio.open(samples["test_tiled.tif"]) as src, rasterio.open(bucket.gdal_path(acq.visual_key)) as out:
        rng = np.random.default_rng(0)
        rows, cols = rng.integers(50, 950, 40), rng.integers(50, 950, 40)
        xs, ys = rasterio.transform.xy(src.transform, rows, cols)
        ux, uy = warp_transform(src.crs, out.crs, xs, ys)
        diffs = []
        for r, c, x, y in zip(rows, cols, ux, uy):
            ref = src.read(window=((r - 2, r + 3), (c - 2, c + 3))).reshape(3, -1).mean(axis=1)
            orow, ocol = out.index(x, y)
            got = out.read(window=((orow - 2, orow + 3), (ocol - 2, ocol + 3))).reshape(3, -1).mean(axis=1)
            diffs.append(np.abs(ref - got).max())
        # Bilinear resampling at a slightly finer grid: local means agree closely.
        assert np.median(diffs) < 8, diffs


def test_pan_uint16_is_stretched_to_three_equal_bands(ingested_bucket):
    bucket = open_bucket(ingested_bucket)
    acqs, found = acquisitions(ingested_bucket)
    pan_cells = [c for c, d in found.cells.items() if any(a.catalog_id == "SOLARIS01" for a in d.acquisitions)]
    assert pan_cells and all(c.startswith("Z16-") for c in pan_cells)
    with rasterio.open(bucket.gdal_path(acqs["SOLARIS01"].visual_key)) as out:
        data = out.read()
        valid = out.dataset_mask() > 0
    assert np.array_equal(data[0], data[1]) and np.array_equal(data[1], data[2])
    values = data[0][valid]
    assert values.min() >= 1 and values.max() == 255  # stretched to the full range
    assert 60 < values.mean() < 200


def test_nodata_collar_cells_are_not_written(ingested_bucket, samples):
    _, found = acquisitions(ingested_bucket)
    written = {c for c, d in found.cells.items() if any(a.catalog_id == "BAHAMAS01" for a in d.acquisitions)}
    candidates = set(c.id for c in cells_covering(box(*BAHAMAS_STRIP), 4326, 12))
    skipped = candidates - written
    assert written and skipped, "the demo strip should cross the no-data collar"
    with rasterio.open(samples["bahamas_rgb.tif"]) as src:
        for cell_id in skipped:
            cell = ArdCell.parse(cell_id)
            window = rasterio.windows.from_bounds(*rasterio.warp.transform_bounds(
                f"EPSG:{cell.epsg}", src.crs, *cell.bounds), src.transform)
            mask = src.dataset_mask(window=window.round_offsets().round_lengths(), boundless=True)
            assert not mask.any(), f"{cell_id} has valid source pixels but was not written"


def test_data_mask_and_stac_item_describe_the_valid_pixels(ingested_bucket):
    bucket = open_bucket(ingested_bucket)
    acq = acquisitions(ingested_bucket)[0]["BAHAMAS01"]
    with rasterio.open(bucket.gdal_path(acq.visual_key)) as out:
        valid_share = (out.dataset_mask() > 0).mean()
    mask = gpd.read_file(bucket.gdal_path(acq.assets["data-mask"]))
    cell = acq.cell
    assert mask.crs.to_epsg() == cell.epsg
    assert mask.geometry.union_all().area / cell.geometry.area == pytest.approx(valid_share, abs=0.02)
    item = json.loads(bucket.read_text(acq.assets["stac"]))
    assert item["id"] == f"{cell.id}_BAHAMAS01"
    assert item["properties"]["datetime"] == "2021-11-02T00:00:00Z"
    assert item["properties"]["proj:code"] == f"EPSG:{cell.epsg}"
    assert item["properties"]["valid_fraction"] == pytest.approx(valid_share, abs=1e-6)
    west, south, east, north = item["bbox"]
    assert -79 < west < east < -78 and 24 < south < north < 25


def test_cell_pixels_keep_native_resolution():
    assert cell_pixels(0.3) == 16_768 and 5000 / cell_pixels(0.3) <= 0.3
    assert cell_pixels(5000 / 16384) == 16_384
    assert cell_pixels(300) == 128


def test_reingest_is_idempotent(samples, tmp_path):
    bucket = open_bucket(tmp_path)
    first = ingest(samples["bahamas_rgb.tif"], bucket, "B1", date(2021, 1, 1), bounds_wgs84=BAHAMAS_STRIP)
    keys_before = sorted(o.key for o in bucket.list())
    pixels_before = bucket.read_bytes(first.written[0].keys[1])
    second = ingest(samples["bahamas_rgb.tif"], bucket, "B1", date(2021, 1, 1), bounds_wgs84=BAHAMAS_STRIP)
    assert second.cells == first.cells
    assert sorted(o.key for o in bucket.list()) == keys_before
    assert bucket.read_bytes(first.written[0].keys[1]) == pixels_before


# --- bad input -----------------------------------------------------------------------------
def test_truncated_tiff_fails_naming_the_file_and_writes_nothing(samples, tmp_path):
    broken = tmp_path / "truncated.tif"
    data = samples["sample_geotiff.tif"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    bucket = open_bucket(tmp_path / "bucket")
    with pytest.raises(IngestError, match="truncated.tif.*(corrupt or truncated|cannot be opened)"):
        ingest(broken, bucket, "X", date(2020, 1, 1))
    assert list(bucket.list()) == []


def test_tiff_without_georeferencing_is_refused(tmp_path):
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8") as dst:
        dst.write(np.full((3, 32, 32), 100, np.uint8))
    with pytest.raises(IngestError, match="plain.tif: has no georeferencing"):
        ingest(plain, open_bucket(tmp_path / "b"), "X", date(2020, 1, 1))


def test_engineering_crs_is_refused(tmp_path):
    local = tmp_path / "local.tif"
    wkt = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    with rasterio.open(local, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8", crs=wkt,
                       transform=from_origin(0, 32, 1, 1)) as dst:
        dst.write(np.full((3, 32, 32), 100, np.uint8))
    with pytest.raises(IngestError, match="local.tif"):
        ingest(local, open_bucket(tmp_path / "b"), "X", date(2020, 1, 1))


def test_not_a_raster_is_refused(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("this is not a tiff")
    with pytest.raises(IngestError, match="notes.tif: cannot be opened as a raster"):
        ingest(text, open_bucket(tmp_path / "b"), "X", date(2020, 1, 1))


def test_bad_catalog_id_is_refused(samples, tmp_path):
    with pytest.raises(IngestError, match="catalog id"):
        ingest(samples["bahamas_rgb.tif"], open_bucket(tmp_path), "bad/id", date(2020, 1, 1))
