"""ARD map tiles: the mosaic over a local folder and over an S3-compatible server (GDAL /vsis3/)."""

from __future__ import annotations

import io

import mercantile
import numpy as np
import pytest
from PIL import Image

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.service.tiles import ArdMosaic, TileError
from imagesim_pipeline.storage import open_bucket


def _rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def _tile_with_data(root, acquisition, zoom: int) -> mercantile.Tile:
    """A tile around a point inside the acquisition's data mask."""
    import geopandas as gpd

    mask = gpd.read_file(root / acquisition.assets["data-mask"]).to_crs(4326)
    point = mask.geometry.union_all().representative_point()
    return mercantile.tile(point.x, point.y, zoom)


def test_assets_are_newest_first_and_filtered_by_date_and_catalog(world):
    root, _ = world
    mosaic = ArdMosaic(open_bucket(root))
    assets = mosaic.assets()
    assert [a.date for a in assets] == sorted((a.date for a in assets), reverse=True)
    cell = assets[0].cell
    bounds = assets[0].bounds
    here = mosaic.select(bounds)
    assert cell in {a.cell for a in here} and len({a.catalog_id for a in here}) >= 2
    oldest = min(a.date for a in here)
    assert {a.date for a in mosaic.select(bounds, day=oldest)} == {oldest}
    assert {a.catalog_id for a in mosaic.select(bounds, catalog_id=here[0].catalog_id)} == {here[0].catalog_id}
    with pytest.raises(TileError, match="outside every ARD delivery"):
        mosaic.tile(16, 0, 0)
    with pytest.raises(TileError, match="zoom"):
        mosaic.tile(25, 0, 0)


def test_tiles_over_s3_match_the_local_folder(world, s3_env):
    root, _ = world
    local = open_bucket(root)
    found = discover_bucket(local)
    delivery = found.cells[found.cell_ids[0]]
    acquisition = delivery.acquisitions[0]
    s3 = open_bucket(s3_env)
    for key in acquisition.assets.values():  # one acquisition: its COG, mask and STAC item
        s3.upload_file(root / key, key)
    t = _tile_with_data(root, acquisition, 16)
    over_s3 = ArdMosaic(s3).tile(t.z, t.x, t.y)
    over_folder = ArdMosaic(local).tile(t.z, t.x, t.y, catalog_id=acquisition.catalog_id)
    pixels = _rgba(over_s3)
    assert pixels.shape == (256, 256, 4) and (pixels[..., 3] == 255).mean() > 0.9
    assert np.array_equal(pixels, _rgba(over_folder))
