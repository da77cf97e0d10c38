"""Describe one cell's delivery: acquisitions, dates, footprint and bytes, with checks.

Used by the ``ard_tile`` asset; plain Python so that notebooks and the CLI can call it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import rasterio
from rasterio.errors import RasterioError
from shapely.geometry import box, mapping
from shapely.ops import unary_union

from imagesim_pipeline.ard.discovery import Acquisition, CellDelivery
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import Bucket, StorageError


@dataclass
class AcquisitionSummary:
    """One acquisition of a delivery as read from its files."""

    catalog_id: str
    date: str
    width: int
    height: int
    resolution: float
    bytes: int
    valid_fraction: float | None
    footprint: object  # shapely geometry in the cell's CRS
    assets: list[str]


@dataclass
class DeliverySummary:
    """What a cell's delivery holds: its acquisitions and the problems found reading them."""

    cell_id: str
    epsg: int
    acquisitions: list[AcquisitionSummary] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def footprint(self):
        """The union of the acquisitions' valid-data footprints (cell CRS)."""
        return unary_union([a.footprint for a in self.acquisitions]) if self.acquisitions else box(0, 0, 0, 0)

    def footprint_wgs84_geojson(self) -> dict:
        """The footprint as GeoJSON in WGS84 (for maps in the asset metadata)."""
        from rasterio.warp import transform_geom

        return transform_geom(f"EPSG:{self.epsg}", "EPSG:4326", mapping(self.footprint))


class DeliveryError(ImagesimError, ValueError):
    """A delivered file is unusable; the message names the key and the reason."""


def tiff_data_end(src: rasterio.DatasetReader) -> int:
    """The byte just past the last full-resolution block of a tiled TIFF (0 if unknown).

    A COG stores its overviews first and its full-resolution blocks last, so comparing this
    with the object's size catches a truncated upload from the headers alone.
    """
    end = 0
    for (row, col), _ in src.block_windows(1):
        offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
        if offset:
            size = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)
            end = max(end, int(offset) + int(size or 0))
    return end


def _footprint_from_mask(bucket: Bucket, key: str, cell_geom) -> object:
    import geopandas as gpd

    with bucket.local_copy(key) as path:
        frame = gpd.read_file(path)
    return unary_union(list(frame.geometry)).intersection(cell_geom)


def summarise_acquisition(bucket: Bucket, acq: Acquisition) -> AcquisitionSummary:
    """Open the visual COG's header (and mask, STAC item) and check they fit the cell."""
    cell = acq.cell
    key = acq.visual_key
    try:
        with bucket.rasterio_env(), rasterio.open(bucket.gdal_path(key)) as src:
            epsg = src.crs.to_epsg() if src.crs else None
            if epsg != cell.epsg:
                raise DeliveryError(f"{bucket.url(key)}: CRS is {src.crs or 'missing'}, "
                                    f"but cell {cell.id} is delivered in EPSG:{cell.epsg}")
            if src.count != 3 or src.dtypes[0] != "uint8":
                raise DeliveryError(f"{bucket.url(key)}: expected a 3-band uint8 visual image, "
                                    f"found {src.count} band(s) of {src.dtypes[0]}")
            xmin, ymin, xmax, ymax = cell.bounds
            tol = src.res[0]
            b = src.bounds
            if b.left < xmin - tol or b.right > xmax + tol or b.bottom < ymin - tol or b.top > ymax + tol:
                raise DeliveryError(f"{bucket.url(key)}: bounds {tuple(round(v) for v in b)} fall outside "
                                    f"cell {cell.id} {tuple(round(v) for v in cell.bounds)}")
            # Decoding the coarsest overview is cheap and fails on a file cut before its data.
            factor = (src.overviews(1) or [1])[-1]
            src.read(1, out_shape=(max(1, src.height // factor), max(1, src.width // factor)))
            tiff_end = tiff_data_end(src)
            if tiff_end > acq.sizes.get("visual", tiff_end):
                raise DeliveryError(f"{bucket.url(key)}: truncated: its image data runs to byte {tiff_end} "
                                    f"but the file has {acq.sizes['visual']} bytes; deliver it again")
            width, height, res = src.width, src.height, src.res[0]
            image_box = box(*src.bounds)
    except RasterioError as exc:
        raise DeliveryError(f"{bucket.url(key)}: cannot be opened ({exc}); the file is corrupt or truncated") from None
    footprint = image_box.intersection(cell.geometry)
    if "data-mask" in acq.assets:
        try:
            footprint = _footprint_from_mask(bucket, acq.assets["data-mask"], cell.geometry)
        except (StorageError, RasterioError, ValueError, OSError, RuntimeError) as exc:  # pyogrio: RuntimeError
            raise DeliveryError(f"{bucket.url(acq.assets['data-mask'])}: unreadable data mask ({exc})") from None
    valid_fraction = None
    if "stac" in acq.assets:
        try:
            item = json.loads(bucket.read_text(acq.assets["stac"]))
            value = item.get("properties", {}).get("valid_fraction")
            valid_fraction = None if value is None else float(value)
        except (StorageError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise DeliveryError(f"{bucket.url(acq.assets['stac'])}: unreadable STAC item ({exc})") from None
    if valid_fraction is None:
        valid_fraction = footprint.area / cell.geometry.area
    return AcquisitionSummary(acq.catalog_id, acq.date.isoformat(), width, height, res, acq.bytes,
                              float(valid_fraction), footprint, sorted(acq.assets))


def summarise_delivery(bucket: Bucket, delivery: CellDelivery) -> DeliverySummary:
    """Summarise every acquisition of a cell; an unusable one is reported, not fatal."""
    summary = DeliverySummary(delivery.cell.id, delivery.cell.epsg)
    for acq in sorted(delivery.acquisitions, key=lambda a: (a.date, a.catalog_id)):
        try:
            summary.acquisitions.append(summarise_acquisition(bucket, acq))
        except DeliveryError as exc:
            summary.problems.append(str(exc))
    return summary
