"""Render aerial-looking imagery from OSM features: the demo world's pixels.

Each feature class gets a base colour and texture (so no class is a flat colour), buildings get
roof colours and sun-cast shadows, roads their class width. An acquisition's :class:`Look`
varies the season tint, sun direction, haze and a small misregistration, and may let a few
buildings vanish (something true for change detection to find).

Rendering works on windows of a global pixel grid (pixel ``(0, 0)`` at the top-left corner of
the ARD grid of the zone): a :class:`Scene` holds an acquisition's shapes in drawing order with
a spatial index, :meth:`Scene.classes` rasterizes any window, and :func:`colourise` draws every
noise from values fixed per global pixel (or per global lattice point). Rendering an area in
strips therefore gives the same pixels as rendering it in one piece, with no seams, in memory
bounded by the strip. Everything is drawn from seeded generators: the same seed gives the same
pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely.geometry.base import BaseGeometry

from imagesim_pipeline.demo.features import (
    DITCH_WIDTH,
    RAIL_WIDTH,
    ROAD_WIDTHS,
    TRAM_WIDTH,
    WATERWAY_WIDTH,
)

# Class ids of the class raster.
BACKGROUND, FARMLAND, GRASS, FOREST, BARE, PARKING, WATER = 0, 1, 2, 3, 4, 5, 6
RAILWAY, PATH, MINOR_ROAD, MAJOR_ROAD, SHADOW = 7, 8, 9, 10, 11
RESIDENTIAL, INDUSTRIAL = 12, 13  # residential yards; industrial or commercial ground
ROOF0 = 20  # roofs use ids ROOF0 .. ROOF0 + len(ROOFS) - 1
# Drawing order: later ones cover earlier ones (land use, land cover, water, lines, shadows, roofs).
AREA_IDS = {"residential": RESIDENTIAL, "industrial": INDUSTRIAL, "farmland": FARMLAND, "grass": GRASS,
            "forest": FOREST, "bare": BARE, "parking": PARKING, "water": WATER}
LINE_IDS = {"ditch": (WATER, DITCH_WIDTH), "waterway": (WATER, WATERWAY_WIDTH), "railway": (RAILWAY, RAIL_WIDTH),
            "path": (PATH, ROAD_WIDTHS["path"]), "minor_road": (MINOR_ROAD, ROAD_WIDTHS["minor_road"]),
            "major_road": (MAJOR_ROAD, ROAD_WIDTHS["major_road"]), "tram": (RAILWAY, TRAM_WIDTH)}
SUMMER = {BACKGROUND: (148, 138, 118), FARMLAND: (168, 160, 96), GRASS: (92, 138, 64), FOREST: (42, 82, 44),
          BARE: (188, 172, 140), PARKING: (108, 108, 110), WATER: (38, 66, 92), RAILWAY: (84, 74, 66),
          PATH: (176, 166, 150), MINOR_ROAD: (122, 120, 118), MAJOR_ROAD: (88, 88, 94), SHADOW: (34, 37, 44),
          RESIDENTIAL: (112, 128, 84), INDUSTRIAL: (164, 162, 156)}
AUTUMN = {**SUMMER, FARMLAND: (150, 120, 80), GRASS: (128, 130, 72), FOREST: (104, 86, 46),
          RESIDENTIAL: (128, 122, 82)}
ROOFS = [(152, 62, 52), (120, 121, 126), (182, 172, 160), (88, 90, 100), (160, 102, 70), (68, 78, 88)]
TEXTURE = {FOREST: 16.0, GRASS: 8.0, FARMLAND: 10.0, BARE: 9.0, WATER: 3.0, BACKGROUND: 9.0, RESIDENTIAL: 10.0,
           INDUSTRIAL: 6.0}  # pixel noise sigma
# Blotches on a lattice of CELL px: (class, cell, amplitude, salt). Tree crowns at ~3 m, garden
# patches, stains on industrial ground.
BLOTCHES = [(FOREST, 6, 14.0, 3), (RESIDENTIAL, 10, 18.0, 4), (INDUSTRIAL, 24, 8.0, 5)]
GRID_ORIGIN = (500_000.0 - 10_240_000.0, 10_240_000.0)  # top-left corner of a zone's ARD grid (x, y)
TILE = 256  # noise values are drawn per global tile of TILE x TILE lattice points
BANK = 61  # distinct pixel-noise tiles per seed
HAZE = (205, 205, 210)
_OFFSET = 1 << 40  # keeps tile indices non-negative for the seed sequence


@dataclass(frozen=True)
class Look:
    """How one acquisition sees the world."""

    season: str = "summer"
    sun_azimuth: float = 150.0  # degrees clockwise from north: where the light comes from
    sun_elevation: float = 45.0
    haze: float = 0.0  # 0..1 blend towards a bright grey
    shift_m: tuple[float, float] = (0.0, 0.0)  # misregistration (east, north) in metres
    vanished_buildings: float = 0.0  # share of buildings not there at this date


def to_utm(features: dict[str, list[BaseGeometry]], epsg: int) -> dict[str, list[BaseGeometry]]:
    """``features`` (WGS84) reprojected to ``epsg``."""
    fn = Transformer.from_crs(4326, epsg, always_xy=True).transform
    return {k: [shapely.transform(g, fn, interleaved=False) for g in v] for k, v in features.items()}


def vanished(n_buildings: int, look: Look, seed: int) -> np.ndarray:
    """Which of the buildings are gone in an acquisition with this look and (acquisition) seed."""
    return np.random.default_rng(seed).random(n_buildings) < look.vanished_buildings


def building_looks(n_buildings: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per building, the same in every acquisition of a world: roof colour index, a random height (m)."""
    rng = np.random.default_rng([seed, 1])
    return rng.integers(0, len(ROOFS), n_buildings), rng.uniform(6, 24, n_buildings)


@dataclass
class Scene:
    """One acquisition's shapes in drawing order (class values), with a spatial index."""

    geoms: np.ndarray  # shapely geometries, drawing order
    values: np.ndarray  # uint8 class id of each
    tree: shapely.STRtree
    shift_m: tuple[float, float]

    @classmethod
    def build(cls, features_utm: dict[str, list[BaseGeometry]], look: Look, seed: int,
              heights: list[float] | None = None, world_seed: int | None = None) -> Scene:
        """The shapes of an acquisition (``seed``: which buildings vanished) in a world (``world_seed``,
        default ``seed``: roof colours, random heights); ``heights``: tagged heights (NaN: random)."""
        geoms: list[np.ndarray] = []
        values: list[np.ndarray] = []

        def add(shapes, value) -> None:
            shapes = np.asarray(shapes, dtype=object)
            if len(shapes):
                geoms.append(shapes)
                values.append(np.asarray(value, dtype=np.uint8) * np.ones(len(shapes), np.uint8))

        for name, cid in AREA_IDS.items():
            add([g for g in features_utm.get(name, []) if not g.is_empty], cid)
        for name, (cid, width_m) in LINE_IDS.items():
            lines = np.asarray([g for g in features_utm.get(name, []) if not g.is_empty], dtype=object)
            if len(lines):
                add(shapely.buffer(lines, width_m / 2, cap_style="flat"), cid)
        buildings = np.asarray(features_utm.get("building", []), dtype=object)
        keep = ~vanished(len(buildings), look, seed)
        roofs, height = building_looks(len(buildings), seed if world_seed is None else world_seed)
        if heights is not None and len(buildings):
            tagged = np.asarray(heights, dtype=np.float64)
            height = np.where(np.isfinite(tagged), tagged, height)
        if len(buildings):
            keep &= ~shapely.is_empty(buildings)
        standing = buildings[keep]
        if len(standing):
            # Shadows fall away from the sun, longer when it is low.
            away = math.radians(look.sun_azimuth + 180)
            lengths = height[keep] / math.tan(math.radians(look.sun_elevation))
            offsets = np.stack([lengths * math.sin(away), lengths * math.cos(away)], axis=1)
            per_vertex = np.repeat(offsets, shapely.get_num_coordinates(standing), axis=0)
            add(shapely.transform(standing, lambda xy: xy + per_vertex), SHADOW)
            add(standing, ROOF0 + roofs[keep])
        all_geoms = np.concatenate(geoms) if geoms else np.empty(0, dtype=object)
        all_values = np.concatenate(values) if values else np.empty(0, dtype=np.uint8)
        return cls(all_geoms, all_values, shapely.STRtree(all_geoms), look.shift_m)

    def classes(self, xmin: float, ymax: float, res: float, shape: tuple[int, int]) -> np.ndarray:
        """The class id of every pixel of the window whose top-left corner is (xmin, ymax)."""
        height, width = shape
        x0, y1 = xmin + self.shift_m[0], ymax + self.shift_m[1]
        query = shapely.box(x0, y1 - height * res, x0 + width * res, y1)
        hits = np.sort(self.tree.query(query, predicate="intersects"))
        if not len(hits):
            return np.full(shape, BACKGROUND, np.uint8)
        transform = from_origin(x0, y1, res, res)
        return rasterize(zip(self.geoms[hits], self.values[hits].tolist(), strict=True), out_shape=shape,
                         transform=transform, fill=BACKGROUND, dtype="uint8")


def global_origin(xmin: float, ymax: float, res: float) -> tuple[int, int]:
    """The global pixel (row, column) of the pixel whose top-left corner is (xmin, ymax)."""
    return round((GRID_ORIGIN[1] - ymax) / res), round((xmin - GRID_ORIGIN[0]) / res)


def class_raster(features_utm: dict[str, list[BaseGeometry]], bounds, res: float, look: Look, seed: int
                 ) -> np.ndarray:
    """The class id of every pixel of ``bounds`` at ``res`` (one window)."""
    xmin, ymin, xmax, ymax = bounds
    width, height = int(math.ceil((xmax - xmin) / res)), int(math.ceil((ymax - ymin) / res))
    return Scene.build(features_utm, look, seed).classes(xmin, ymax, res, (height, width))


def _tile_rng(seed: int, salt: int, ty: int, tx: int) -> np.random.Generator:
    return np.random.default_rng([seed, salt, ty + _OFFSET, tx + _OFFSET])


def lattice(seed: int, salt: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Standard normal values at global lattice points ``rows[0]..rows[1]-1`` x ``cols[0]..cols[1]-1``.

    Each value depends only on the seed, the salt and its lattice point (drawn per global tile).
    """
    return _tiled(rows, cols, lambda ty, tx: _tile_rng(seed, salt, ty, tx).standard_normal((TILE, TILE),
                                                                                              dtype=np.float32))


@lru_cache(maxsize=4)
def _bank(seed: int, salt: int) -> np.ndarray:
    """BANK tiles of standard normal values for pixel noise."""
    return np.random.default_rng([seed, salt, _OFFSET]).standard_normal((BANK, TILE, TILE), dtype=np.float32)


def pixel_noise(seed: int, salt: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Standard normal noise per global pixel, like :func:`lattice` but cheap for big windows.

    Each global tile shows one of BANK random tiles, flipped one of four ways, picked by a hash
    of its position: white noise never shows the repetition, and no window shows a seam.
    """
    bank = _bank(seed, salt)

    def tile(ty: int, tx: int) -> np.ndarray:
        h = ((ty + _OFFSET) * 0x9E3779B1 ^ (tx + _OFFSET) * 0x85EBCA77 ^ salt * 0xC2B2AE3D) & 0xFFFFFFFF
        h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        h ^= h >> 13
        t = bank[h % BANK]
        return t[:: 1 if h & 1 << 20 else -1, :: 1 if h & 1 << 21 else -1]

    return _tiled(rows, cols, tile)


def _tiled(rows: tuple[int, int], cols: tuple[int, int], tile) -> np.ndarray:
    """The window ``rows`` x ``cols`` of a plane made of global TILE x TILE tiles ``tile(ty, tx)``."""
    r0, r1 = rows
    c0, c1 = cols
    out = np.empty((r1 - r0, c1 - c0), np.float32)
    for ty in range(r0 // TILE, (r1 - 1) // TILE + 1):
        ya, yb = max(r0, ty * TILE), min(r1, (ty + 1) * TILE)
        for tx in range(c0 // TILE, (c1 - 1) // TILE + 1):
            xa, xb = max(c0, tx * TILE), min(c1, (tx + 1) * TILE)
            out[ya - r0:yb - r0, xa - c0:xb - c0] = tile(ty, tx)[ya - ty * TILE:yb - ty * TILE,
                                                                 xa - tx * TILE:xb - tx * TILE]
    return out


def smooth_noise(seed: int, salt: int, origin: tuple[int, int], shape: tuple[int, int], cell: int,
                 amplitude: float) -> np.ndarray:
    """Low-frequency variation: lattice values every ``cell`` px, bilinearly interpolated."""
    rows = origin[0] + np.arange(shape[0])
    cols = origin[1] + np.arange(shape[1])
    i0, j0 = rows // cell, cols // cell
    coarse = lattice(seed, salt, (int(i0[0]), int(i0[-1]) + 2), (int(j0[0]), int(j0[-1]) + 2)) * amplitude
    fy = ((rows % cell) / cell).astype(np.float32)[:, None]
    fx = ((cols % cell) / cell).astype(np.float32)[None, :]
    xi = j0 - j0[0]
    across = coarse[:, xi] * (1 - fx) + coarse[:, xi + 1] * fx  # lattice rows, interpolated along x
    step = across[1:] - across[:-1]
    out = np.empty(shape, np.float32)
    yi = i0 - i0[0]
    for k in np.unique(yi).tolist():  # rows between lattice rows k and k + 1
        lo, hi = np.searchsorted(yi, k), np.searchsorted(yi, k, side="right")
        np.multiply(fy[lo:hi], step[k], out=out[lo:hi])
        out[lo:hi] += across[k]
    return out


def colourise(classes: np.ndarray, look: Look, seed: int, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """RGB (3, H, W) uint8 in 1..255 from a class raster whose first pixel is global pixel ``origin``."""
    keep = 1.0 - look.haze  # haze blends everything towards a bright grey
    palette = np.zeros((256, 3), np.float32)
    for cid, colour in (AUTUMN if look.season == "autumn" else SUMMER).items():
        palette[cid] = colour
    for i, colour in enumerate(ROOFS):
        palette[ROOF0 + i] = colour
    palette = palette * keep + np.array(HAZE, np.float32) * look.haze
    sigma = np.full(256, 5.0, np.float32)
    for cid, s in TEXTURE.items():
        sigma[cid] = s
    height, width = classes.shape
    rows, cols = (origin[0], origin[0] + height), (origin[1], origin[1] + width)
    shade = pixel_noise(seed, 1, rows, cols)
    shade *= sigma[classes] * keep
    shade += smooth_noise(seed, 2, origin, classes.shape, 48, 7.0 * keep)
    for cid, cell, amplitude, salt in BLOTCHES:
        where = classes == cid
        if where.any():
            shade[where] += smooth_noise(seed, salt, origin, classes.shape, cell, amplitude * keep)[where]
    out = np.empty((3, height, width), np.uint8)
    for band in range(3):
        channel = palette[:, band][classes]
        channel += shade
        np.clip(channel, 1, 255, out=channel)
        out[band] = channel
    return out
