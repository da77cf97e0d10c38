"""Cut an ARD visual COG exactly on the ARD grid into JPEG chips, classifying no-data as it goes.

A cell at the chip zoom is a pixel window of the COG (ingested and Maxar ARD tiles are aligned
to the grid). The tile is read one *row of chips* at a time — a strip as tall as a chip —
so each compressed block is decoded once and memory holds one strip, never the whole tile.
Each chip's valid-pixel fraction comes from the raster's mask (and its cloud fraction from the
cloud-mask polygons when given), so nothing is read back later. Strips can be spread over
processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.chips.naming import MAX_ZOOM, MIN_ZOOM, ChipName
from imagesim_pipeline.errors import ImagesimError

NO_DATA, PARTIAL, ALL_DATA = "no data", "partial data", "all data"
# GDAL's block cache per process (rasterio takes an int as bytes). A row of chips of a 16k ARD
# tile is 25 MB decoded; blocks are never needed again once their row is done.
CACHE_BYTES = 128 * 2**20
# rasterio (GDAL) is imported by the functions that read rasters: readers of chip manifests and
# classes (embeddings, search, changes) need none of it.


class ChipError(ImagesimError, ValueError):
    """A tile cannot be chipped; the message names the file and the reason."""


@dataclass
class Chip:
    """One chip cut from an acquisition: its JPEG (unless without data) and fractions."""

    name: str
    jpeg: bytes | None  # None for a no-data chip that is not written
    valid_fraction: float
    cloud_fraction: float | None

    @property
    def nodata_class(self) -> str:
        """``no data``, ``partial data`` or ``all data``."""
        return classify(self.valid_fraction)


def classify(valid_fraction: float) -> str:
    """The nodata class of a chip with this share of valid pixels."""
    if valid_fraction <= 0:
        return NO_DATA
    if valid_fraction >= 1:
        return ALL_DATA
    return PARTIAL


@dataclass(frozen=True)
class ChipJob:
    """Everything a worker needs to chip some strips of one acquisition."""

    path: str  # a GDAL path
    tile: ArdCell
    catalog_id: str
    zoom: int = 17
    quality: int = 90
    size: int | None = None
    write_empty: bool = False
    cloud_wkb: tuple[bytes, ...] = ()
    gdal_options: tuple[tuple[str, Any], ...] = ()


def check_zoom(zoom: int) -> None:
    """Raise :class:`ChipError` unless ``zoom`` is a supported chip zoom."""
    if not MIN_ZOOM <= zoom <= MAX_ZOOM:
        raise ChipError(f"chip zoom {zoom} is outside the supported {MIN_ZOOM}..{MAX_ZOOM} "
                        "(17 = 156.25 m chips)")


def _open_checked(job: ChipJob):
    import rasterio
    from rasterio.errors import RasterioError

    try:
        src = rasterio.open(job.path)
    except RasterioError as exc:
        raise ChipError(f"{job.path}: cannot be opened ({exc})") from None
    if src.count != 3 or src.dtypes[0] != "uint8":
        src.close()
        raise ChipError(f"{job.path}: has {src.count} band(s) of {src.dtypes[0]}; chipping needs a 3-band uint8 "
                        "visual image. Convert it with `imagesim ingest`.")
    return src


def chip_grid(src, job: ChipJob) -> tuple[int, int]:
    """(chips per side, pixels per chip) of the tile at the chip zoom; the grid must be aligned."""
    n = 2 ** (job.zoom - job.tile.zoom)
    xmin, _, _, ymax = job.tile.bounds
    res = src.res[0]
    px = job.tile.size / n / res
    col0 = (xmin - src.transform.c) / res
    row0 = (src.transform.f - ymax) / res
    if abs(px - round(px)) > 1e-6 or abs(col0 - round(col0)) > 1e-3 or abs(row0 - round(row0)) > 1e-3:
        raise ChipError(f"{job.path}: its pixel grid is not aligned to the ARD grid at zoom {job.zoom} "
                        f"({px:.3f} px per chip); re-ingest it with `imagesim ingest`")
    if round(px) < 1:
        raise ChipError(f"{job.path}: a zoom-{job.zoom} chip is smaller than one pixel")
    return n, int(round(px))


def _mask_is_nodata(src) -> bool:
    """Whether the dataset's mask is its nodata value (not an internal mask band or alpha)."""
    from rasterio.enums import MaskFlags

    return src.nodata is not None and all(MaskFlags.nodata in flags for flags in src.mask_flag_enums)


def _strip_chips(src, job: ChipJob, row: int, n: int, px: int, clouds) -> Iterator[Chip]:
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    xmin, _, _, ymax = job.tile.bounds
    res = src.res[0]
    col_base = int(round((xmin - src.transform.c) / res))
    row_base = int(round((src.transform.f - ymax) / res))
    window = Window(col_base, row_base + row * px, n * px, px)
    # Boundless reads go through a VRT and are slow: use them only for tiles smaller than their cell.
    inside = col_base >= 0 and row_base >= 0 and col_base + n * px <= src.width and row_base + n * px <= src.height
    try:
        # (fill_value makes rasterio take a far slower path: only pass it for boundless reads)
        data = src.read(window=window) if inside else src.read(window=window, boundless=True, fill_value=0)
        if _mask_is_nodata(src):
            # The nodata mask follows from the pixels just read: no second decode of the strip.
            mask = (data != src.nodata).any(axis=0)
        else:
            mask = src.dataset_mask(window=window, boundless=not inside) > 0
    except RasterioError as exc:
        raise ChipError(f"{job.path}: reading chip row {row} failed ({exc}); "
                        "the file is corrupt or truncated") from None
    cloud = None
    if clouds is not None:
        from rasterio.features import rasterize

        cloud = rasterize(clouds, out_shape=mask.shape, transform=src.window_transform(window),
                          fill=0, default_value=1, dtype="uint8").astype(bool)
    tile_x, tile_y = job.tile.tile
    scale = 2 ** (job.zoom - job.tile.zoom)
    for col in range(n):
        cmask = mask[:, col * px:(col + 1) * px]
        valid = float(cmask.mean())
        cell = ArdCell.from_tile(job.tile.zone, tile_x * scale + col, tile_y * scale + row, job.zoom)
        name = ChipName(cell, job.catalog_id).name
        cloud_fraction = None
        if cloud is not None:
            c = cloud[:, col * px:(col + 1) * px]
            cloud_fraction = float((c & cmask).sum() / max(1, cmask.sum()))
        if valid == 0 and not job.write_empty:
            yield Chip(name, None, 0.0, cloud_fraction)
            continue
        pixels = np.ascontiguousarray(np.moveaxis(data[:, :, col * px:(col + 1) * px], 0, -1))
        if job.size and job.size != px:
            from PIL import Image

            pixels = np.asarray(Image.fromarray(pixels).resize((job.size, job.size), Image.Resampling.BILINEAR))
        jpeg = simplejpeg.encode_jpeg(pixels, quality=job.quality, colorspace="RGB", colorsubsampling="420")
        yield Chip(name, jpeg, valid, cloud_fraction)


def iter_chip_rows(job: ChipJob, rows: list[int] | None = None) -> Iterator[list[Chip]]:
    """The chips of each given row of chips (default: all rows), the tile opened once."""
    check_zoom(job.zoom)
    import rasterio
    from shapely import from_wkb

    clouds = [from_wkb(w) for w in job.cloud_wkb] if job.cloud_wkb else None
    with rasterio.Env(GDAL_CACHEMAX=CACHE_BYTES, **dict(job.gdal_options)), _open_checked(job) as src:
        n, px = chip_grid(src, job)
        for row in rows if rows is not None else range(n):
            yield list(_strip_chips(src, job, row, n, px, clouds))


def chip_rows(job: ChipJob, rows: list[int] | None = None) -> list[Chip]:
    """Chip the given rows of chips (default: all) of one acquisition (a worker's task)."""
    return [chip for row in iter_chip_rows(job, rows) for chip in row]


def chip_acquisition(job: ChipJob, processes: int = 1, progress: Callable[[int, int], None] | None = None
                     ) -> Iterator[Chip]:
    """Every chip of one acquisition, row by row, over ``processes`` worker processes."""
    import rasterio

    check_zoom(job.zoom)
    with rasterio.Env(**dict(job.gdal_options)), _open_checked(job) as src:
        n, _ = chip_grid(src, job)
    if processes <= 1:
        for row, chips in enumerate(iter_chip_rows(job), 1):
            yield from chips
            if progress:
                progress(row, n)
        return
    # Contiguous runs of rows, so rows sharing a compressed block are read by the same worker.
    parts = min(n, processes * 4)
    batches = [list(range(i * n // parts, (i + 1) * n // parts)) for i in range(parts)]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        done = 0
        for chips in pool.map(chip_rows, [job] * len(batches), batches):
            done += math.ceil(len(chips) / n)
            if progress:
                progress(min(done, n), n)
            yield from chips
