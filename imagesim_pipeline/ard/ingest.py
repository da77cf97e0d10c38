"""Ingest any georeferenced image into the ARD delivery layout.

``ingest(src, bucket, catalog_id, acquired)`` reprojects the image into the UTM zone of each
level-12 cell it covers and writes, per cell that holds at least one valid pixel::

    ard/<zone>/<quadkey12>/<date>/<catalog_id>-visual.tif       3-band uint8 COG, nodata 0
                                 /<catalog_id>-data-mask.gpkg  valid-data footprint
                                 /<catalog_id>.json            STAC item (written last)

Pixels are aligned to the cell: a cell is ``N x N`` pixels with ``N`` a multiple of 128, so
that ARD-grid cells down to zoom 19 are whole pixel windows; ``N`` is the smallest such
number at least as fine as the source (or ``resolution`` when given). Pixel value 0 is
reserved for no data: valid pixels are 1..255. uint16 (and other) imagery is stretched with
per-band 2-98 % percentiles onto 16..255; single-band (pan) imagery is expanded to three bands.

The whole source is read once, decimated, before anything is written, so a corrupt or
truncated file fails early with its name and nothing lands in the bucket.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window, from_bounds
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from imagesim_pipeline.ard.grid import TILE_ZOOM, ArdCell, cell_size, cells_covering
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import Bucket, StorageError, layout

PIXEL_MULTIPLE = 128  # 2 ** (19 - 12): cells down to zoom 19 are whole pixel windows
NODATA = 0
STRETCH_FLOOR = 16
CHUNK_ROWS = 2048
FOOTPRINT_MAX_PX = 1024  # the footprint polygon is traced on a mask at most this many px wide
VISUAL_PROFILE = {
    "driver": "COG",
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "2",
    "BLOCKSIZE": "512",
    "OVERVIEWS": "AUTO",
    "OVERVIEW_RESAMPLING": "AVERAGE",
    "SPARSE_OK": "TRUE",
    "NUM_THREADS": "ALL_CPUS",
}


class IngestError(ImagesimError, ValueError):
    """The source image cannot be ingested; the message names the file and the reason."""


@dataclass
class CellWritten:
    """The ARD files written for one cell of an ingested image."""

    cell: str
    keys: list[str]
    valid_fraction: float
    resolution: float


@dataclass
class IngestResult:
    """What ingesting one image wrote, and the cells skipped for having no valid pixels."""

    source: str
    catalog_id: str
    acquired: date
    written: list[CellWritten] = field(default_factory=list)
    skipped_nodata: list[str] = field(default_factory=list)

    @property
    def cells(self) -> list[str]:
        """The ids of the cells written."""
        return [w.cell for w in self.written]


# --- source inspection ---------------------------------------------------------------------
def _open(path: str) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioError as exc:
        raise IngestError(f"{path}: cannot be opened as a raster ({exc}). Is it a complete GeoTIFF?") from None


def _check_georeferencing(src: rasterio.DatasetReader, path: str) -> CRS:
    if src.crs is None:
        raise IngestError(f"{path}: has no georeferencing (no CRS). Ingest needs a georeferenced image; "
                          "assign one first, e.g. `gdal_edit.py -a_srs EPSG:xxxx`.")
    if src.transform.is_identity and not src.gcps[0]:
        raise IngestError(f"{path}: has a CRS but no geotransform: its pixels have no position on the ground")
    try:
        crs = CRS.from_user_input(src.crs.to_wkt())
    except CRSError as exc:
        raise IngestError(f"{path}: its CRS is not one PROJ knows ({exc})") from None
    if not (crs.is_projected or crs.is_geographic):
        raise IngestError(f"{path}: its CRS {crs.name!r} is a local or engineering CRS with no "
                          "relation to the earth; reproject it to a known CRS first")
    try:
        Transformer.from_crs(crs, 4326, always_xy=True)
    except ProjError as exc:
        code = crs.to_epsg(min_confidence=100)
        raise IngestError(f"{path}: its CRS {crs.name!r}{f' (EPSG:{code})' if code else ''} cannot be related to "
                          f"WGS84 ({exc}); "
                          "its GeoKeys are probably wrong: set the right one with `gdal_edit.py -a_srs EPSG:xxxx`") \
            from None
    return crs


def _band_plan(src: rasterio.DatasetReader, path: str) -> list[int]:
    """Which source bands become red, green and blue."""
    if src.count in (1, 2):
        return [1, 1, 1]  # panchromatic (a second band is alpha or ignored)
    if src.count >= 3:
        return [1, 2, 3]
    raise IngestError(f"{path}: has no bands")


def _decimated_shape(height: int, width: int, max_px: int) -> tuple[int, int, int]:
    factor = max(1, math.ceil(max(height, width) / max_px))
    return math.ceil(height / factor), math.ceil(width / factor), factor


@dataclass
class _Stretch:
    """Maps source values to 1..255 per output band."""

    low: np.ndarray
    high: np.ndarray
    identity: bool

    def apply(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.identity:
            out = data.astype(np.uint8, copy=True)
        else:
            scaled = (data.astype(np.float32) - self.low[:, None, None]) / (self.high - self.low)[:, None, None]
            # Stretched values start at STRETCH_FLOOR, not 1: clipped shadows stay clearly apart from
            # no data (0) even after JPEG, so chip classifiers that only see pixels are not fooled.
            out = (np.clip(scaled, 0, 1) * (255 - STRETCH_FLOOR) + STRETCH_FLOOR).astype(np.uint8)
        out = np.maximum(out, 1)  # 0 is no data
        out[:, ~valid] = NODATA
        return out


def _inspect(src: rasterio.DatasetReader, path: str, bands: list[int]) -> tuple[_Stretch, BaseGeometry]:
    """Read the whole source once, decimated: the stretch and the valid-data footprint (source CRS).

    Reading every block here is what detects truncated or corrupt files before any output.
    """
    h, w, _ = _decimated_shape(src.height, src.width, FOOTPRINT_MAX_PX)
    try:
        data = src.read(sorted(set(bands)), out_shape=(len(set(bands)), h, w), resampling=Resampling.nearest)
        mask = src.dataset_mask(out_shape=(h, w), resampling=Resampling.nearest) > 0
    except RasterioError as exc:
        raise IngestError(f"{path}: reading its pixels failed ({exc}); the file is corrupt or truncated") from None
    if not mask.any():
        raise IngestError(f"{path}: holds no valid pixels (everything is no data)")
    index = {b: i for i, b in enumerate(sorted(set(bands)))}
    picked = np.stack([data[index[b]] for b in bands])
    if src.dtypes[0] == "uint8":
        stretch = _Stretch(np.zeros(3), np.full(3, 255.0), identity=True)
    else:
        valid_values = picked[:, mask].astype(np.float64)
        low = np.percentile(valid_values, 2, axis=1)
        high = np.percentile(valid_values, 98, axis=1)
        high = np.where(high > low, high, low + 1)
        stretch = _Stretch(low.astype(np.float32), high.astype(np.float32), identity=False)
    # Footprint: trace the decimated mask, in source pixel space scaled back to the source CRS.
    scale = rasterio.Affine.scale(src.width / w, src.height / h)
    transform = src.transform @ scale
    polygons = [shape(g) for g, v in rasterio.features.shapes(mask.astype(np.uint8), mask=mask, transform=transform)
                if v == 1]
    footprint = unary_union(polygons).buffer(0)
    return stretch, footprint


def native_resolution(src: rasterio.DatasetReader, dst_epsg: int) -> float:
    """The source pixel size in metres of ``dst_epsg`` (its finer axis)."""
    left, bottom, right, top = transform_bounds(src.crs, f"EPSG:{dst_epsg}", *src.bounds, densify_pts=21)
    return min((right - left) / src.width, (top - bottom) / src.height)


def cell_pixels(resolution: float, zoom: int = TILE_ZOOM) -> int:
    """Pixels along a cell edge: the smallest multiple of 128 at least as fine as ``resolution``."""
    return PIXEL_MULTIPLE * max(1, math.ceil(cell_size(zoom) / resolution / PIXEL_MULTIPLE))


# --- per-cell output -----------------------------------------------------------------------
def _write_cell(src: rasterio.DatasetReader, path: str, cell: ArdCell, bands: list[int], stretch: _Stretch,
                resolution: float | None, resampling: Resampling,
                workdir: Path) -> tuple[Path, object, float, float] | None:
    """Warp the source onto ``cell``'s pixel grid; returns (cog, footprint, valid share, res) or None."""
    epsg = cell.epsg
    n = cell_pixels(resolution or native_resolution(src, epsg))
    res = cell.size / n
    xmin, ymin, xmax, ymax = cell.bounds
    transform = from_origin(xmin, ymax, res, res)
    # Only the part of the cell that the source reaches needs warping.
    sl, sb, sr, st = transform_bounds(src.crs, f"EPSG:{epsg}", *src.bounds, densify_pts=21)
    if sl >= xmax or sr <= xmin or sb >= ymax or st <= ymin:
        return None
    window = from_bounds(max(sl, xmin), max(sb, ymin), min(sr, xmax), min(st, ymax), transform)
    col0, row0 = max(0, math.floor(window.col_off)), max(0, math.floor(window.row_off))
    col1 = min(n, math.ceil(window.col_off + window.width))
    row1 = min(n, math.ceil(window.row_off + window.height))
    window = Window(col0, row0, col1 - col0, row1 - row0)
    vrt_options = {"crs": f"EPSG:{epsg}", "transform": transform, "width": n, "height": n, "resampling": resampling}
    if src.nodata is None and ColorInterp.alpha not in src.colorinterp:
        vrt_options["add_alpha"] = True
    tmp = workdir / f"{cell.id}-work.tif"
    fh, fw, factor = _decimated_shape(n, n, FOOTPRINT_MAX_PX)
    coarse = np.zeros((fh, fw), dtype=bool)
    valid_pixels = 0
    profile = {"driver": "GTiff", "width": n, "height": n, "count": 3, "dtype": "uint8", "crs": f"EPSG:{epsg}",
               "transform": transform, "nodata": NODATA, "tiled": True, "blockxsize": 512, "blockysize": 512,
               "compress": "deflate", "sparse_ok": True, "bigtiff": "if_safer"}
    try:
        with WarpedVRT(src, **vrt_options) as vrt, rasterio.open(tmp, "w", **profile) as dst:
            for row in range(int(window.row_off), int(window.row_off + window.height), CHUNK_ROWS):
                chunk = Window(window.col_off, row, window.width, min(CHUNK_ROWS, window.row_off + window.height - row))
                valid = vrt.dataset_mask(window=chunk) > 0
                if not valid.any():
                    continue
                data = vrt.read(bands, window=chunk)
                dst.write(stretch.apply(data, valid), window=chunk)
                valid_pixels += int(valid.sum())
                # Trace the footprint on a coarse mask: a coarse pixel is valid if any fine one is.
                r0, c0 = int(chunk.row_off), int(chunk.col_off)
                rows, cols = np.nonzero(valid)
                coarse[(rows + r0) // factor, (cols + c0) // factor] = True
    except RasterioError as exc:
        raise IngestError(f"{path}: warping into {cell.id} failed ({exc}); the file is corrupt or truncated") from None
    if valid_pixels == 0:
        tmp.unlink(missing_ok=True)
        return None
    cog = workdir / f"{cell.id}-visual.tif"
    rasterio.shutil.copy(tmp, cog, **VISUAL_PROFILE)
    tmp.unlink()
    coarse_transform = transform @ rasterio.Affine.scale(factor, factor)
    polygons = [shape(g) for g, v in rasterio.features.shapes(coarse.astype(np.uint8), mask=coarse,
                                                              transform=coarse_transform) if v == 1]
    footprint = unary_union(polygons).intersection(cell.geometry)
    return cog, footprint, valid_pixels / (n * n), res


def _write_mask(footprint, cell: ArdCell, catalog_id: str, path: Path) -> None:
    import geopandas as gpd

    frame = gpd.GeoDataFrame({"catalog_id": [catalog_id], "cell": [cell.id]}, geometry=[footprint],
                             crs=f"EPSG:{cell.epsg}")
    frame.to_file(path, driver="GPKG", layer="data_mask")


def stac_item(cell: ArdCell, catalog_id: str, acquired: date, footprint, resolution: float, n: int,
              source: str, valid_fraction: float) -> dict:
    """A STAC 1.0 item for one ingested acquisition of one cell."""
    wgs84 = shape(transform_geom(f"EPSG:{cell.epsg}", "EPSG:4326", mapping(footprint)))
    xmin, _, _, ymax = cell.bounds
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "id": f"{cell.id}_{catalog_id}",
        "bbox": list(wgs84.bounds),
        "geometry": mapping(wgs84),
        "properties": {
            "datetime": datetime.combine(acquired, datetime.min.time(), UTC).isoformat().replace("+00:00", "Z"),
            "gsd": resolution,
            "proj:code": f"EPSG:{cell.epsg}",
            "proj:shape": [n, n],
            "proj:transform": [resolution, 0.0, xmin, 0.0, -resolution, ymax],
            "grid:code": f"MXRA-{cell.id}",
            "catalog_id": catalog_id,
            "valid_fraction": round(valid_fraction, 6),
            "imagesim:source": source,
            "imagesim:ingested": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "links": [],
        "assets": {
            "visual": {"href": f"./{catalog_id}-visual.tif",
                       "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["visual"]},
            "data-mask": {"href": f"./{catalog_id}-data-mask.gpkg", "type": "application/geopackage+sqlite3",
                          "roles": ["data-mask"]},
        },
    }


def ingest(source: str | Path, bucket: Bucket, catalog_id: str, acquired: date, *,
           bounds_wgs84: tuple[float, float, float, float] | None = None, resolution: float | None = None,
           resampling: str = "bilinear", progress: Callable[[str], None] | None = None) -> IngestResult:
    """Cut ``source`` on the level-12 grid and write it into ``bucket`` as ARD deliveries.

    ``bounds_wgs84`` (west, south, east, north) limits the ingest to the cells meeting that box
    (each of them is still cut whole).
    """
    path = str(source)
    if not catalog_id or not all(c.isalnum() or c in "_." for c in catalog_id):
        raise IngestError(f"catalog id {catalog_id!r} must be letters, digits, '_' or '.'")
    say = progress or (lambda _msg: None)
    result = IngestResult(path, catalog_id, acquired)
    with _open(path) as src:
        crs = _check_georeferencing(src, path)
        bands = _band_plan(src, path)
        stretch, footprint = _inspect(src, path, bands)
        if bounds_wgs84 is not None:
            clip = box(*transform_bounds("EPSG:4326", src.crs, *bounds_wgs84, densify_pts=21))
            footprint = footprint.intersection(clip)
            if footprint.is_empty:
                raise IngestError(f"{path}: no valid pixels inside the bounds {bounds_wgs84}")
        cells = cells_covering(footprint, crs, TILE_ZOOM)
        say(f"{Path(path).name}: {len(cells)} level-12 cell(s) to cut")
        with tempfile.TemporaryDirectory(prefix="imagesim-ingest-") as tmp:
            # 1. Cut every cell locally: a corrupt or truncated source fails here, before anything
            #    reaches the bucket.
            ready = []
            for i, cell in enumerate(cells, 1):
                out = _write_cell(src, path, cell, bands, stretch, resolution, Resampling[resampling], Path(tmp))
                if out is None:
                    result.skipped_nodata.append(cell.id)
                    say(f"  [{i}/{len(cells)}] {cell.id}: only no-data pixels, not written")
                    continue
                cog, cell_footprint, valid_fraction, res = out
                mask_path = Path(tmp) / f"{cell.id}-data-mask.gpkg"
                _write_mask(cell_footprint, cell, catalog_id, mask_path)
                n = round(cell.size / res)
                item = stac_item(cell, catalog_id, acquired, cell_footprint, res, n, Path(path).name, valid_fraction)
                ready.append((cell, cog, mask_path, item, valid_fraction, res))
                say(f"  [{i}/{len(cells)}] {cell.id}: cut, {valid_fraction:.1%} valid at {res:.3f} m")
            # 2. Publish cell by cell, the STAC item last (its presence says the acquisition is complete).
            for cell, cog, mask_path, item, valid_fraction, res in ready:
                folder = layout.ard_cell_prefix(cell.id) + acquired.isoformat()
                keys = [f"{folder}/{catalog_id}-data-mask.gpkg", f"{folder}/{catalog_id}-visual.tif",
                        f"{folder}/{catalog_id}.json"]
                try:
                    bucket.upload_file(mask_path, keys[0])
                    bucket.upload_file(cog, keys[1])
                    bucket.write_text(keys[2], json.dumps(item, indent=2))
                except StorageError as exc:
                    done = ", ".join(w.cell for w in result.written) or "none"
                    raise IngestError(f"{path}: writing {cell.id} failed ({exc}). Cells written completely: {done}; "
                                      f"{cell.id} and the rest were not (run the ingest again)") from None
                cog.unlink()
                mask_path.unlink()
                result.written.append(CellWritten(cell.id, keys, valid_fraction, res))
    return result
