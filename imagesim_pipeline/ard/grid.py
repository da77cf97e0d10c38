"""The Maxar ARD grid: one quadtree per UTM zone, in north-UTM metres.

Facts (see the design notes):

* ``map_size = 10_240_000``; a zone's grid spans x in [500 000 - map_size, 500 000 + map_size]
  and y in [-map_size, map_size] of the zone's *north* UTM projection (EPSG:326zz).
* A cell at zoom ``z`` is ``2 * map_size / 2**z`` metres wide: z12 = 5 000 m (the delivery
  tile), z17 = 156.25 m (the default chip).
* Quadkey digits: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right; tile ``y`` counts
  down from the top.
* Cells whose quadkey starts with 2 or 3 lie south of the equator: they are delivered in
  EPSG:327zz, where the true northing is the grid y + 10 000 000.

A cell id is ``Z{zone:02d}-{quadkey}``; its path form is ``{zone:02d}/{quadkey}`` (as in
``maxar-ard-grid``'s ``tile_id``); parsing accepts an unpadded zone too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from imagesim_pipeline.errors import ImagesimError

MAP_SIZE = 10_240_000
FALSE_EASTING = 500_000
SOUTH_FALSE_NORTHING = 10_000_000
MAX_ZOOM = 24
TILE_ZOOM = 12

_ID_RE = re.compile(r"^Z(?P<zone>\d{1,2})-(?P<quadkey>[0-3]+)$")
_PATH_RE = re.compile(r"^(?P<zone>\d{1,2})/(?P<quadkey>[0-3]+)$")


class GridError(ImagesimError, ValueError):
    """A cell id, zone, quadkey or zoom that is not part of the ARD grid."""


def cell_size(zoom: int) -> float:
    """Edge length in metres of a cell at ``zoom``."""
    return 2 * MAP_SIZE / 2**zoom


def _check_zone(zone: int, source: str) -> None:
    if not 1 <= zone <= 60:
        raise GridError(f"{source!r}: UTM zone {zone} is outside 1..60")


@dataclass(frozen=True, order=True)
class ArdCell:
    """One cell of the ARD grid: a UTM zone and a quadkey (its length is the zoom)."""

    zone: int
    quadkey: str

    def __post_init__(self) -> None:
        _check_zone(self.zone, f"zone {self.zone}")
        if not self.quadkey or len(self.quadkey) > MAX_ZOOM or set(self.quadkey) - set("0123"):
            raise GridError(
                f"quadkey {self.quadkey!r} must be 1..{MAX_ZOOM} digits of 0-3 (zone {self.zone})"
            )

    # --- parsing and formatting -------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> ArdCell:
        """Parse ``Z33-120020223133`` or ``33/120020223133``."""
        text = text.strip()
        match = _ID_RE.match(text) or _PATH_RE.match(text)
        if not match:
            raise GridError(
                f"{text!r} is not an ARD cell id: expected 'Z<zone>-<quadkey>' "
                "(e.g. Z33-120020223133) or '<zone>/<quadkey>' with quadkey digits 0-3"
            )
        zone = int(match["zone"])
        _check_zone(zone, text)
        return cls(zone, match["quadkey"])

    @classmethod
    def from_tile(cls, zone: int, x: int, y: int, zoom: int) -> ArdCell:
        """The cell at column ``x`` and row ``y`` (counted from the top) of ``zoom``."""
        if not 0 <= x < 2**zoom or not 0 <= y < 2**zoom:
            raise GridError(f"tile ({x}, {y}) is outside zoom {zoom}")
        digits = []
        for i in range(zoom, 0, -1):
            mask = 1 << (i - 1)
            digits.append(str((1 if x & mask else 0) + (2 if y & mask else 0)))
        return cls(zone, "".join(digits))

    @property
    def id(self) -> str:
        """The cell id, ``Z<zone>-<quadkey>`` (zone zero-padded)."""
        return f"Z{self.zone:02d}-{self.quadkey}"

    @property
    def path(self) -> str:
        """The path form used in bucket keys, ``33/120020223133`` (zone zero-padded: ``05/...``)."""
        return f"{self.zone:02d}/{self.quadkey}"

    def __str__(self) -> str:
        return self.id

    # --- geometry ---------------------------------------------------------------------------
    @property
    def zoom(self) -> int:
        """The zoom level: the quadkey's length."""
        return len(self.quadkey)

    @property
    def tile(self) -> tuple[int, int]:
        """Column and row of the cell at its zoom (row 0 at the top)."""
        x = y = 0
        for digit in self.quadkey:
            d = int(digit)
            x = (x << 1) | (d & 1)
            y = (y << 1) | (d >> 1)
        return x, y

    @property
    def size(self) -> float:
        """The side length in metres."""
        return cell_size(self.zoom)

    @property
    def is_south(self) -> bool:
        """Whether the cell lies in the southern half of the zone's grid."""
        return self.quadkey[0] in "23"

    @property
    def epsg(self) -> int:
        """EPSG code of the CRS the cell is delivered in (326zz north, 327zz south)."""
        return (32700 if self.is_south else 32600) + self.zone

    @property
    def grid_bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the zone's north-UTM metres (the grid's own frame)."""
        x, y = self.tile
        size = self.size
        xmin = FALSE_EASTING - MAP_SIZE + x * size
        ymax = MAP_SIZE - y * size
        return (xmin, ymax - size, xmin + size, ymax)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in true UTM metres of :attr:`epsg`."""
        xmin, ymin, xmax, ymax = self.grid_bounds
        if self.is_south:
            ymin += SOUTH_FALSE_NORTHING
            ymax += SOUTH_FALSE_NORTHING
        return (xmin, ymin, xmax, ymax)

    @property
    def geometry(self) -> BaseGeometry:
        """The cell as a polygon in :attr:`epsg`."""
        return box(*self.bounds)

    @property
    def wgs84_bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees, of the densified cell outline."""
        return self.wgs84_geometry.bounds

    @property
    def wgs84_geometry(self) -> BaseGeometry:
        """The cell outline in WGS84 (edges densified, so curved meridians are followed)."""
        outline = shapely.segmentize(self.geometry, self.size / 16)
        return _reproject(_to_wgs84(self.epsg), outline)

    # --- hierarchy --------------------------------------------------------------------------
    @property
    def parent(self) -> ArdCell:
        """The cell one zoom level up that contains this one."""
        if self.zoom == 1:
            raise GridError(f"{self.id} is at zoom 1 and has no parent")
        return ArdCell(self.zone, self.quadkey[:-1])

    def ancestor(self, zoom: int) -> ArdCell:
        """The cell at ``zoom`` (<= own zoom) containing this one."""
        if not 1 <= zoom <= self.zoom:
            raise GridError(f"{self.id}: ancestor zoom {zoom} must be in 1..{self.zoom}")
        return ArdCell(self.zone, self.quadkey[:zoom])

    def children(self, zoom: int | None = None) -> list[ArdCell]:
        """The cells at ``zoom`` (default: one level down) inside this cell, in quadkey order."""
        zoom = self.zoom + 1 if zoom is None else zoom
        if not self.zoom < zoom <= MAX_ZOOM:
            raise GridError(f"{self.id}: child zoom {zoom} must be in {self.zoom + 1}..{MAX_ZOOM}")
        return list(self.iter_children(zoom))

    def iter_children(self, zoom: int) -> Iterator[ArdCell]:
        """The cells at ``zoom`` inside this cell, in quadkey order, one at a time."""
        depth = zoom - self.zoom
        for n in range(4**depth):
            digits = np.base_repr(n, 4).rjust(depth, "0") if depth else ""
            yield ArdCell(self.zone, self.quadkey + digits)

    def contains(self, other: ArdCell) -> bool:
        """Whether ``other`` lies within this cell (same zone, quadkey prefix)."""
        return self.zone == other.zone and other.quadkey.startswith(self.quadkey)


def wgs84_quads(cells: list[ArdCell]) -> np.ndarray:
    """WGS84 polygons of many small cells (chips) from their four reprojected corners, vectorised.

    For chip-sized cells the densified outline of :attr:`ArdCell.wgs84_geometry` differs from the
    straight quadrilateral by far less than a pixel, at a fraction of the size.
    """
    out = np.empty(len(cells), dtype=object)
    by_epsg: dict[int, list[int]] = {}
    for i, cell in enumerate(cells):
        by_epsg.setdefault(cell.epsg, []).append(i)
    for epsg, index in by_epsg.items():
        b = np.array([cells[i].bounds for i in index])  # xmin, ymin, xmax, ymax
        xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0]], axis=1)
        ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3]], axis=1)
        lon, lat = _to_wgs84(epsg)(xs.ravel(), ys.ravel())
        rings = np.stack([np.asarray(lon).reshape(-1, 4), np.asarray(lat).reshape(-1, 4)], axis=2)
        out[index] = shapely.polygons(rings)
    return out


def _reproject(fn, geometry: BaseGeometry) -> BaseGeometry:
    """Apply a pyproj ``transform(x, y)`` function to every coordinate of ``geometry``."""
    return shapely.transform(geometry, fn, interleaved=False)


# --- covering -------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _to_wgs84(epsg: int) -> Callable[..., Any]:
    return Transformer.from_crs(epsg, 4326, always_xy=True).transform


@lru_cache(maxsize=256)
def _transformer(src: str, dst: int) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_epsg(dst), always_xy=True)


def zone_of_longitude(lon: float) -> int:
    """The UTM zone (1..60) whose 6-degree band holds ``lon`` (the 180th meridian is zone 60)."""
    return min(60, max(1, int(math.floor((lon + 180) / 6)) + 1))


def in_zone_grid(cell: ArdCell) -> bool:
    """Whether ``cell`` belongs to its zone's grid near the zone's longitude edges.

    Zone grids are asymmetric, so that each place is covered once: a cell that straddles the
    zone's east edge belongs to the zone; one that straddles the west edge belongs to it only
    when it reaches at least as far east of the edge as its second-westernmost corner lies west
    of it (the rule of Maxar's published grid, as implemented by ``maxar-ard-grid``).
    """
    lons = sorted(_corner_lons(cell))
    west = -180 + (cell.zone - 1) * 6
    east = west + 6
    if lons[0] >= west and lons[3] <= east:
        return True
    if lons[3] >= east and lons[0] <= east:
        return True
    if lons[3] >= west and lons[0] <= west:
        return lons[3] - west >= west - lons[1]
    return False


def _corner_lons(cell: ArdCell) -> list[float]:
    xmin, ymin, xmax, ymax = cell.bounds
    lons, _ = _to_wgs84(cell.epsg)([xmin, xmax, xmax, xmin], [ymin, ymin, ymax, ymax])
    return list(lons)


def cells_covering(geometry: BaseGeometry, crs: str | int | CRS, zoom: int = TILE_ZOOM) -> list[ArdCell]:
    """The cells at ``zoom`` that cover ``geometry`` (given in ``crs``), over every zone it touches.

    For each candidate zone the geometry is clipped to the zone's longitude band (widened by a
    cell), projected into the zone's north UTM (the grid's frame) and intersected with the cells
    of its bounding tile range; cells near the band edges are kept by :func:`in_zone_grid`.
    Cells that only touch the geometry along an edge are not part of the covering.
    """
    if geometry.is_empty:
        return []
    if not 1 <= zoom <= MAX_ZOOM:
        raise GridError(f"zoom {zoom} must be in 1..{MAX_ZOOM}")
    crs_obj = CRS.from_user_input(crs)
    crs_text = crs_obj.to_wkt()
    # A geometry already in a UTM zone's CRS maps into that zone's grid frame exactly.
    native_zone = int(crs_obj.utm_zone[:-1]) if crs_obj.utm_zone else None
    native_offset = -SOUTH_FALSE_NORTHING if crs_obj.utm_zone and crs_obj.utm_zone.endswith("S") else 0
    # Densify before reprojecting so long straight edges bend the way they should.
    minx, miny, maxx, maxy = geometry.bounds
    span = max(maxx - minx, maxy - miny)
    dense = shapely.segmentize(geometry, span / 64) if span > 0 else geometry
    wgs84 = _reproject(_transformer(crs_text, 4326).transform, dense)
    if not wgs84.is_valid:
        wgs84 = shapely.make_valid(wgs84)
    west, south, east, north = wgs84.bounds
    size = cell_size(zoom)
    # A cell's width in degrees at the latitude farthest from the equator (capped near the poles).
    lat = min(84.0, max(abs(south), abs(north)))
    pad = size / 111_320 / math.cos(math.radians(lat))
    cells: list[ArdCell] = []
    for zone in range(zone_of_longitude(west - pad), zone_of_longitude(east + pad) + 1):
        band_west = -180 + (zone - 1) * 6
        band = box(band_west - pad, -90, band_west + 6 + pad, 90)
        if zone == native_zone and band.contains(wgs84):
            part_utm = shapely.transform(geometry, lambda xy: xy + (0, native_offset))
        else:
            part = wgs84.intersection(band)
            if part.is_empty:
                continue
            part_utm = _reproject(_transformer(_WGS84_WKT, _north_utm_epsg(zone)).transform, part)
        for cell in _cells_in_frame(part_utm, zone, zoom, size):
            if in_zone_grid(cell):
                cells.append(cell)
    return sorted(set(cells))


_WGS84_WKT = CRS.from_epsg(4326).to_wkt()


def _north_utm_epsg(zone: int) -> int:
    return 32600 + zone


def _cells_in_frame(geom: BaseGeometry, zone: int, zoom: int, size: float) -> list[ArdCell]:
    """Cells of one zone intersecting ``geom`` given in the grid frame (north UTM)."""
    minx, miny, maxx, maxy = geom.bounds
    n = 2**zoom
    x0 = max(0, int(math.floor((minx - (FALSE_EASTING - MAP_SIZE)) / size)))
    x1 = min(n - 1, int(math.floor((maxx - (FALSE_EASTING - MAP_SIZE)) / size)))
    y0 = max(0, int(math.floor((MAP_SIZE - maxy) / size)))
    y1 = min(n - 1, int(math.floor((MAP_SIZE - miny) / size)))
    if x1 < x0 or y1 < y0:
        return []
    grid_x, grid_y = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
    xs, ys = grid_x.ravel(), grid_y.ravel()
    xmin = FALSE_EASTING - MAP_SIZE + xs * size
    ymax = MAP_SIZE - ys * size
    boxes = shapely.box(xmin, ymax - size, xmin + size, ymax)
    shapely.prepare(geom)
    hits = shapely.intersects(geom, boxes)
    # A cell that only touches the geometry along an edge does not cover any of it.
    hits[hits] = ~shapely.touches(geom, boxes[hits])
    return [ArdCell.from_tile(zone, int(x), int(y), zoom) for x, y in zip(xs[hits], ys[hits], strict=True)]
