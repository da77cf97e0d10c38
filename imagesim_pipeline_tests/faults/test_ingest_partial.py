"""Fault: a multi-cell image truncated part-way: ingest writes nothing, or names exactly what it wrote."""

from __future__ import annotations

from datetime import date

import pytest

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.ard.ingest import IngestError, ingest
from imagesim_pipeline.samples import BAHAMAS_STRIP
from imagesim_pipeline.storage import LocalBucket, StorageError, open_bucket


def _two_cell_strip_tiff(path) -> None:
    """A COG (overviews first, then the full-resolution tiles top to bottom) over two level-12 cells, one
    above the other (5 m pixels): cut at 85 %, its overviews are whole and the southern tiles missing."""
    import numpy as np
    import rasterio
    import rasterio.shutil
    from rasterio.transform import from_origin

    cell = ArdCell.parse("Z33-120020223133")
    xmin, ymin, xmax, ymax = cell.bounds
    rng = np.random.default_rng(3)
    data = rng.integers(30, 220, (3, 1900, 900), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": 900, "height": 1900, "count": 3, "dtype": "uint8",
               "crs": f"EPSG:{cell.epsg}", "transform": from_origin(xmin + 250, ymax - 250, 5.0, 5.0)}
    plain = path.with_suffix(".plain.tif")
    with rasterio.open(plain, "w", **{**profile, "driver": "GTiff"}) as dst:
        dst.write(data)
    rasterio.shutil.copy(plain, path, driver="COG", compress="deflate", overview_resampling="average")
    plain.unlink()


def test_a_truncated_multi_cell_image_writes_no_cell(tmp_path):
    whole = tmp_path / "two-cells.tif"
    _two_cell_strip_tiff(whole)
    assert len(ingest(whole, open_bucket(tmp_path / "whole"), "T1", date(2021, 1, 1)).cells) == 2
    data = whole.read_bytes()
    broken = tmp_path / "two-cells-85.tif"
    broken.write_bytes(data[: int(len(data) * 0.85)])
    bucket = open_bucket(tmp_path / "bucket")
    said: list[str] = []
    with pytest.raises(IngestError, match="two-cells-85.tif.*corrupt or truncated"):
        ingest(broken, bucket, "T1", date(2021, 1, 1), progress=said.append)
    assert any(": cut," in line for line in said), said  # the first cell was cut before the second failed
    assert list(bucket.list()) == []


def test_a_failing_bucket_mid_ingest_names_the_cells_written(samples, tmp_path, monkeypatch):
    bucket = open_bucket(tmp_path / "bucket")
    real_upload = LocalBucket.upload_file
    calls = {"n": 0}

    def fail_on_fourth(self, local, key):
        calls["n"] += 1
        if calls["n"] == 4:  # the second cell's first file
            raise StorageError(f"{self.url(key)}: disk full")
        real_upload(self, local, key)

    monkeypatch.setattr(LocalBucket, "upload_file", fail_on_fourth)
    with pytest.raises(IngestError) as info:
        ingest(samples["bahamas_rgb.tif"], bucket, "B1", date(2021, 1, 1), bounds_wgs84=BAHAMAS_STRIP)
    written = sorted({"Z{}-{}".format(*o.key.split("/")[1:3]) for o in bucket.list("ard/") if o.key.endswith(".json")})
    assert len(written) == 1 and f"Cells written completely: {written[0]};" in str(info.value)
