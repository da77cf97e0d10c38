"""Checks on delivered files: truncation, wrong CRS and wrong band layout are reported by name."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from imagesim_pipeline.ard.delivery import summarise_delivery
from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.storage import open_bucket


def deepforest_delivery(root):
    bucket = open_bucket(root)
    found = discover_bucket(bucket, "ard/31/")
    (delivery,) = found.cells.values()
    return bucket, delivery


def test_good_delivery_is_summarised(bucket_copy):
    bucket, delivery = deepforest_delivery(bucket_copy)
    summary = summarise_delivery(bucket, delivery)
    assert summary.problems == []
    (acq,) = summary.acquisitions
    assert acq.catalog_id == "DEEPFOREST01" and acq.width % 128 == 0
    assert 0.05 < acq.footprint.area / 1e4 < 8  # ~250 m x 250 m, in hectares
    assert summary.footprint_wgs84_geojson()["type"] in ("Polygon", "MultiPolygon")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_visual_is_reported(bucket_copy, keep):
    bucket, delivery = deepforest_delivery(bucket_copy)
    path = bucket_copy / delivery.acquisitions[0].visual_key
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    bucket, delivery = deepforest_delivery(bucket_copy)  # the listing sees the new size
    summary = summarise_delivery(bucket, delivery)
    assert summary.acquisitions == []
    assert "DEEPFOREST01-visual.tif" in summary.problems[0]
    assert "truncated" in summary.problems[0]


def test_corrupt_data_mask_or_stac_item_is_reported(bucket_copy):
    bucket, delivery = deepforest_delivery(bucket_copy)
    acq = delivery.acquisitions[0]
    mask = bucket_copy / acq.assets["data-mask"]
    mask.write_bytes(mask.read_bytes()[:2000])
    summary = summarise_delivery(bucket, delivery)
    assert summary.acquisitions == [] and "unreadable data mask" in summary.problems[0]
    (bucket_copy / acq.assets["data-mask"]).unlink()
    (bucket_copy / acq.assets["stac"]).write_text('["not", "an", "item"]')
    bucket, delivery = deepforest_delivery(bucket_copy)
    summary = summarise_delivery(bucket, delivery)
    assert summary.acquisitions == [] and "unreadable STAC item" in summary.problems[0]


@pytest.mark.parametrize("crs, count, message", [("EPSG:32632", 3, "CRS is EPSG:32632"),
                                                 ("EPSG:32631", 1, "3-band uint8")])
def test_wrong_crs_or_bands_is_reported(bucket_copy, crs, count, message):
    bucket, delivery = deepforest_delivery(bucket_copy)
    path = bucket_copy / delivery.acquisitions[0].visual_key
    xmin, _, _, ymax = delivery.cell.bounds
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=count, dtype="uint8", crs=crs,
                       transform=from_origin(xmin, ymax, 1, 1)) as dst:
        dst.write(np.ones((count, 256, 256), np.uint8))
    bucket, delivery = deepforest_delivery(bucket_copy)
    summary = summarise_delivery(bucket, delivery)
    assert summary.acquisitions == [] and message in summary.problems[0]
