"""Web-mercator XYZ tiles mosaicked from the bucket's ARD visual COGs (rio-tiler does the warping).

Every acquisition's ``*-visual.tif`` is one mosaic asset, known by its cell's WGS84 bounds, date
and catalog id. A tile reads the assets it meets, newest acquisition first, and rio-tiler's
``FirstMethod`` fills each pixel from the first asset with data there: the newest image by
default, older ones where it has no data. A date or a catalog id narrows the assets to that
acquisition. No-data pixels come back transparent (PNG alpha from the COGs' masks).

The listing of ``ard/`` is cached for ``refresh_s`` seconds, so new deliveries appear without a
restart. Over S3 the COGs are read through GDAL's ``/vsis3/`` with the bucket's credentials and
its settings for remote COGs (``S3Bucket.gdal_options``: no directory listing on open, merged
range requests, a block cache, timeouts).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import date

import numpy as np

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import Bucket

TILE_SIZE = 256
MIN_ZOOM = 10  # below this a tile meets too many 5 km cells to read interactively
MAX_ZOOM = 20  # chips are zoom-17 cells of ~1.2 m pixels; 20 is already magnified
MAX_ASSETS = 64  # the most COGs one tile may read


class TileError(ImagesimError):
    """A tile that cannot be served: outside every delivery, bad zoom, unknown acquisition."""


@dataclass(frozen=True)
class MosaicAsset:
    """One acquisition's visual COG over one cell: where it is, when it was taken, what it covers."""

    key: str  # the visual COG's bucket key
    cell: str
    date: date
    catalog_id: str
    bounds: tuple[float, float, float, float]  # WGS84 west, south, east, north


class ArdMosaic:
    """The bucket's ARD deliveries as one mosaic of visual COGs."""

    def __init__(self, bucket: Bucket, refresh_s: float = 60.0) -> None:
        self.bucket = bucket
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._listed_at = -np.inf
        self._assets: list[MosaicAsset] = []
        self._bounds = np.zeros((0, 4))

    # -- the asset list ------------------------------------------------------------------------
    def assets(self) -> list[MosaicAsset]:
        """Every acquisition's visual COG, newest first (re-listed after ``refresh_s``)."""
        with self._lock:
            if time.monotonic() - self._listed_at > self.refresh_s:
                found = discover_bucket(self.bucket)
                assets = [MosaicAsset(acq.visual_key, cell_id, acq.date, acq.catalog_id, delivery.cell.wgs84_bounds)
                          for cell_id, delivery in found.cells.items() for acq in delivery.acquisitions]
                assets.sort(key=lambda a: (a.date, a.catalog_id), reverse=True)
                self._assets = assets
                self._bounds = np.array([a.bounds for a in assets]).reshape(-1, 4)
                self._listed_at = time.monotonic()
            return self._assets

    def bounds(self) -> tuple[float, float, float, float] | None:
        """The WGS84 bounds of every delivery, or None when there is none."""
        self.assets()
        if not len(self._bounds):
            return None
        b = self._bounds
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))

    def start(self) -> tuple[float, float] | None:
        """(lon, lat) to open the map at: the centre of the cell with the most acquisitions."""
        counts: dict[str, int] = {}
        for a in self.assets():
            counts[a.cell] = counts.get(a.cell, 0) + 1
        if not counts:
            return None
        best = max(sorted(counts), key=lambda c: counts[c])
        w, s, e, n = next(a.bounds for a in self.assets() if a.cell == best)
        return ((w + e) / 2, (s + n) / 2)

    def areas(self) -> list[dict]:
        """The delivered areas, largest first: cells joined by a shared acquisition (catalog id) make one area.

        Each is ``{"name", "bounds" (WGS84 west, south, east, north), "cells", "catalog_ids"}``; the name is
        the catalog ids' common prefix when it is a word (the demo's HELSINKI, KOTKA), else the catalog ids.
        """
        parent: dict[str, str] = {}

        def root(cell: str) -> str:
            while parent.setdefault(cell, cell) != cell:
                cell = parent[cell]
            return cell

        first_cell: dict[str, str] = {}
        for a in self.assets():
            parent[root(a.cell)] = root(first_cell.setdefault(a.catalog_id, a.cell))
        groups: dict[str, list[MosaicAsset]] = {}
        for a in self.assets():
            groups.setdefault(root(a.cell), []).append(a)
        areas = []
        for assets in groups.values():
            b = np.array([a.bounds for a in assets])
            ids = sorted({a.catalog_id for a in assets})
            areas.append({"name": _area_name(ids), "cells": len({a.cell for a in assets}), "catalog_ids": ids,
                          "bounds": [float(b[:, 0].min()), float(b[:, 1].min()),
                                     float(b[:, 2].max()), float(b[:, 3].max())]})
        return sorted(areas, key=lambda area: (-area["cells"], area["name"]))

    def acquisitions(self) -> list[dict]:
        """One entry per acquisition (catalog id): its date and cell count, newest first."""
        seen: dict[str, dict] = {}
        for a in self.assets():
            entry = seen.setdefault(a.catalog_id, {"catalog_id": a.catalog_id, "date": a.date.isoformat(), "cells": 0})
            entry["cells"] += 1
        return list(seen.values())

    def source_key(self, cell: str, catalog_id: str) -> str | None:
        """The visual COG of ``catalog_id`` over level-12 ``cell``, if delivered."""
        return next((a.key for a in self.assets() if a.cell == cell and a.catalog_id == catalog_id), None)

    def select(self, bbox: tuple[float, float, float, float], day: date | None = None,
               catalog_id: str | None = None) -> list[MosaicAsset]:
        """The assets meeting ``bbox`` (WGS84), newest first, optionally of one date or catalog id."""
        assets = self.assets()
        if not assets:
            return []
        w, s, e, n = bbox
        b = self._bounds
        hit = (b[:, 0] < e) & (b[:, 2] > w) & (b[:, 1] < n) & (b[:, 3] > s)
        chosen = [assets[i] for i in np.flatnonzero(hit)]
        if day is not None:
            chosen = [a for a in chosen if a.date == day]
        if catalog_id is not None:
            chosen = [a for a in chosen if a.catalog_id == catalog_id]
        return chosen

    # -- tiles -----------------------------------------------------------------------------------
    def tile(self, z: int, x: int, y: int, day: date | None = None, catalog_id: str | None = None) -> bytes:
        """A 256 px PNG of web-mercator tile ``z/x/y``; :class:`TileError` outside every delivery."""
        import morecantile
        from rio_tiler.errors import EmptyMosaicError
        from rio_tiler.io import Reader
        from rio_tiler.mosaic import mosaic_reader

        if not MIN_ZOOM <= z <= MAX_ZOOM:
            raise TileError(f"zoom {z} is outside {MIN_ZOOM}..{MAX_ZOOM}")
        if not (0 <= x < 2**z and 0 <= y < 2**z):
            raise TileError(f"tile {z}/{x}/{y} does not exist (x and y run 0..{2**z - 1} at zoom {z})")
        tms = morecantile.tms.get("WebMercatorQuad")
        w, s, e, n = tms.bounds(morecantile.Tile(x, y, z))
        chosen = self.select((w, s, e, n), day, catalog_id)
        if not chosen:
            what = f" of {day}" if day else (f" of catalog id {catalog_id}" if catalog_id else "")
            raise TileError(f"tile {z}/{x}/{y} is outside every ARD delivery{what} in {self.bucket.url('ard/')}")
        if len(chosen) > MAX_ASSETS:
            raise TileError(f"tile {z}/{x}/{y} meets {len(chosen)} COGs (at most {MAX_ASSETS}): zoom in")

        def read(asset: MosaicAsset, tx: int, ty: int, tz: int):
            # GDAL settings are per thread: every read opens its own environment.
            with self.bucket.rasterio_env():
                with Reader(self.bucket.gdal_path(asset.key), tms=tms) as cog:
                    return cog.tile(tx, ty, tz, tilesize=TILE_SIZE, indexes=(1, 2, 3))

        try:
            image, _ = mosaic_reader(chosen, read, x, y, z, threads=min(4, len(chosen)))
        except EmptyMosaicError:
            raise TileError(f"tile {z}/{x}/{y} has no data in any ARD delivery") from None
        return image.render(img_format="PNG")

    def tilejson(self, tiles_url: str) -> dict:
        """TileJSON 3.0 for the mosaic, its tile URL template given by the caller."""
        bounds = self.bounds() or (-180.0, -85.0, 180.0, 85.0)
        w, s, e, n = bounds
        return {"tilejson": "3.0.0", "name": "imagesim ARD mosaic", "tiles": [tiles_url], "scheme": "xyz",
                "minzoom": MIN_ZOOM, "maxzoom": MAX_ZOOM, "bounds": list(bounds),
                "center": [(w + e) / 2, (s + n) / 2, min(max(14, MIN_ZOOM), MAX_ZOOM)],
                "attribution": "Maxar ARD deliveries in the imagesim bucket"}


def _area_name(catalog_ids: list[str]) -> str:
    """The catalog ids' common prefix when it holds a word of three letters or more, else the ids themselves."""
    prefix = os.path.commonprefix(catalog_ids).rstrip("_.-0123456789") if len(catalog_ids) > 1 else ""
    if sum(c.isalpha() for c in prefix) >= 3:
        return prefix
    return ", ".join(catalog_ids[:3]) + (f" (+{len(catalog_ids) - 3})" if len(catalog_ids) > 3 else "")


__all__ = ["ArdMosaic", "MAX_ZOOM", "MIN_ZOOM", "MosaicAsset", "TILE_SIZE", "TileError"]
