"""Chipping real ingested imagery exactly on the ARD grid, and the nodata classes."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import simplejpeg
from rasterio.transform import from_origin
from rasterio.windows import from_bounds
from shapely.geometry import box

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.chips import (
    ChipError,
    ChipJob,
    ChipName,
    ChipNameError,
    chip_acquisition,
    chip_cell,
    classify_chip_folder,
    get_cog_path_from_chip,
    read_manifest,
)
from imagesim_pipeline.storage import open_bucket


def acquisition(root, zone: str):
    bucket = open_bucket(root)
    found = discover_bucket(bucket, f"ard/{zone}/")
    delivery = found.cells[sorted(found.cells)[0]]
    return bucket, delivery, delivery.acquisitions[0]


def test_chip_names_round_trip_and_point_at_their_tile(ingested_bucket):
    name = ChipName.parse("Z31-10222001103123213_DEEPFOREST01.jpg")
    assert name.cell.zoom == 17 and name.tile.id == "Z31-102220011031" and name.catalog_id == "DEEPFOREST01"
    assert name.name == "Z31-10222001103123213_DEEPFOREST01.jpg"
    assert name.geometry.area == pytest.approx(156.25**2)
    centre = name.wgs84_geometry.centroid
    assert 4 < centre.x < 6 and 51 < centre.y < 52  # the Netherlands
    cog = get_cog_path_from_chip(name.name, ingested_bucket / "ard")
    assert cog.name == "DEEPFOREST01-visual.tif" and cog.parent.parent.name == "102220011031"
    assert get_cog_path_from_chip(name.name, ingested_bucket / "ard" / "31") == cog
    odd = ChipName.parse("Z31-10222001103123213_CAT_01.v2.jpg")
    assert odd.catalog_id == "CAT_01.v2" and odd.name == "Z31-10222001103123213_CAT_01.v2.jpg"
    for bad in ["Z31-1022_X.png", "Z31-102220011031_X.jpg", "Z99-10222001103123213_X.jpg", "nope.jpg"]:
        with pytest.raises(ChipNameError):
            ChipName.parse(bad)


@pytest.mark.parametrize("zone", ["31", "16"])  # 628 px and 316 px chips (17: 4 px, chroma-dominated)
def test_chip_pixels_equal_the_cog_window_at_grid_bounds(ingested_bucket, zone):
    bucket, delivery, acq = acquisition(ingested_bucket, zone)
    job = ChipJob(bucket.gdal_path(acq.visual_key), delivery.cell, acq.catalog_id, zoom=17, quality=95)
    chips = [c for c in chip_acquisition(job) if c.jpeg]
    assert chips
    rng = np.random.default_rng(1)
    with rasterio.open(bucket.gdal_path(acq.visual_key)) as src:
        for chip in rng.choice(chips, size=min(6, len(chips)), replace=False):
            cell = ChipName.parse(chip.name).cell
            window = from_bounds(*cell.bounds, src.transform)
            expected = src.read(window=window.round_offsets().round_lengths())
            mask = src.dataset_mask(window=window.round_offsets().round_lengths()) > 0
            got = np.moveaxis(simplejpeg.decode_jpeg(chip.jpeg), -1, 0)
            assert got.shape == expected.shape
            diff = np.abs(got.astype(int) - expected.astype(int))
            assert diff.mean() < 3 and np.percentile(diff, 99) < 30, chip.name
            assert chip.valid_fraction == pytest.approx(mask.mean())


def test_parallel_and_serial_chipping_agree(ingested_bucket):
    bucket, delivery, acq = acquisition(ingested_bucket, "17")
    job = ChipJob(bucket.gdal_path(acq.visual_key), delivery.cell, acq.catalog_id)
    serial = {c.name: (c.valid_fraction, c.jpeg) for c in chip_acquisition(job, 1)}
    parallel = {c.name: (c.valid_fraction, c.jpeg) for c in chip_acquisition(job, 2)}
    assert serial == parallel and len(serial) == 1024


@pytest.mark.parametrize("zoom, size", [(15, None), (16, 64), (19, None)])
def test_other_zooms_and_sizes(ingested_bucket, zoom, size):
    bucket, delivery, acq = acquisition(ingested_bucket, "31")
    job = ChipJob(bucket.gdal_path(acq.visual_key), delivery.cell, acq.catalog_id, zoom=zoom, size=size)
    chips = [c for c in chip_acquisition(job) if c.jpeg]
    assert chips and all(ChipName.parse(c.name).cell.zoom == zoom for c in chips)
    width, height, _, _ = simplejpeg.decode_jpeg_header(chips[0].jpeg)
    with rasterio.open(bucket.gdal_path(acq.visual_key)) as src:
        native = src.width // 2 ** (zoom - 12)
    assert width == height == (size or native)


@pytest.mark.parametrize("zoom", [12, 20])
def test_zoom_out_of_range_is_refused(ingested_bucket, zoom):
    bucket, delivery, acq = acquisition(ingested_bucket, "31")
    with pytest.raises(ChipError, match=f"chip zoom {zoom} is outside"):
        list(chip_acquisition(ChipJob(bucket.gdal_path(acq.visual_key), delivery.cell, acq.catalog_id, zoom=zoom)))


@pytest.mark.parametrize("count, dtype", [(1, "uint8"), (4, "uint8"), (3, "uint16")])
def test_visual_with_wrong_bands_or_type_is_refused(tmp_path, count, dtype):
    cell = ArdCell.parse("Z31-102220011031")
    path = tmp_path / "bad-visual.tif"
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=count, dtype=dtype,
                       crs=f"EPSG:{cell.epsg}", transform=from_origin(cell.bounds[0], cell.bounds[3], 5000 / 256,
                                                                     5000 / 256)) as dst:
        dst.write(np.ones((count, 256, 256), dtype=dtype))
    with pytest.raises(ChipError, match=f"bad-visual.tif: has {count} band\\(s\\) of {dtype}"):
        list(chip_acquisition(ChipJob(str(path), cell, "X")))


def test_cog_corrupt_part_way_is_named(bucket_copy):
    bucket, delivery, acq = acquisition(bucket_copy, "31")
    path = bucket_copy / acq.visual_key
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(ChipError, match="DEEPFOREST01-visual.tif: reading chip row .* corrupt or truncated"):
        chip_cell(bucket, delivery)
    assert not bucket.exists("chips/31/_manifests/Z31-102220011031.json")


def test_cloud_mask_gives_cloud_fractions(bucket_copy):
    bucket, delivery, acq = acquisition(bucket_copy, "31")
    xmin, ymin, xmax, ymax = delivery.cell.bounds
    clouds = gpd.GeoDataFrame(geometry=[box(xmin, ymin, (xmin + xmax) / 2, ymax)], crs=f"EPSG:{delivery.cell.epsg}")
    key = acq.folder + f"/{acq.catalog_id}-cloud-mask.gpkg"
    clouds.to_file(bucket_copy / key, driver="GPKG")
    delivery = discover_bucket(bucket, "ard/31/").cells[delivery.cell.id]
    result = chip_cell(bucket, delivery)
    fractions = {r["chip"]: r["cloud_fraction"] for r in result.rows if r["written"]}
    mid = (xmin + xmax) / 2
    for name, fraction in fractions.items():
        cxmin, _, cxmax, _ = ChipName.parse(name).cell.bounds
        assert fraction == (1.0 if cxmax <= mid else 0.0 if cxmin >= mid else pytest.approx(fraction))


def test_rechipping_replaces_the_cells_chips(bucket_copy):
    bucket, delivery, _ = acquisition(bucket_copy, "31")
    first = chip_cell(bucket, delivery)
    stale = "chips/31/Z31-10222001103100000_OLDCATALOG.jpg"
    bucket.write_bytes(stale, b"old")
    second = chip_cell(bucket, delivery)
    assert second.rows == first.rows and second.deleted_stale == 1 and not bucket.exists(stale)
    manifest = read_manifest(bucket, delivery.cell.id)
    written = sorted(r["chip"] for r in manifest.chips if r["written"])
    assert written == sorted(k.key.rsplit("/", 1)[1] for k in bucket.list("chips/31/Z31-"))
    assert {r["class"] for r in manifest.chips if r["written"]} == {"partial data", "all data"}


def test_folder_classifier_agrees_with_the_masks_and_reads_only(bucket_copy, tmp_path):
    bucket = open_bucket(bucket_copy)
    found = discover_bucket(bucket, "ard/16/")
    rows = [r for d in found.cells.values() for r in chip_cell(bucket, d).rows if r["written"]]
    folder = bucket_copy / "chips" / "16"
    (folder / "notes.jpg").write_text("not a jpeg")
    real = sorted(folder.glob("Z16-*.jpg"))
    (folder / "Z16-truncated_X.jpg").write_bytes(real[0].read_bytes()[:200])
    before = {p.name: p.read_bytes() for p in folder.glob("*.jpg")}
    index, problems = classify_chip_folder(folder, tmp_path / "index.json")
    assert {p.split(":")[0].rsplit("/", 1)[1] for p in problems} == {"notes.jpg", "Z16-truncated_X.jpg"}
    assert len(index) == len(rows) == 9
    for row in rows:  # slivers of no data narrower than ~4 px are beyond what pixels can tell
        if row["class"] == "all data" or 0.05 < row["valid_fraction"] < 0.95:
            assert index[row["chip"]] == row["class"], row
    assert json.loads((tmp_path / "index.json").read_text()) == index
    assert {p.name: p.read_bytes() for p in folder.glob("*.jpg")} == before
