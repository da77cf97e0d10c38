"""Render aerial-looking imagery from OSM features: the demo world's pixels.

Each feature class gets a base colour and texture (so no class is a flat colour), buildings get
roof colours and sun-cast shadows, roads their class width. An acquisition's :class:`Look`
varies the season tint, sun direction, haze and a small misregistration, and may let a few
buildings vanish (something true for change detection to find). Everything is drawn from a
seeded random generator: the same seed gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely.affinity import translate
from shapely.geometry.base import BaseGeometry

from imagesim_pipeline.demo.features import RAIL_WIDTH, ROAD_WIDTHS, WATERWAY_WIDTH

# Class ids of the class raster, in drawing order (later ones cover earlier ones).
BACKGROUND, FARMLAND, GRASS, FOREST, BARE, PARKING, WATER = 0, 1, 2, 3, 4, 5, 6
RAILWAY, PATH, MINOR_ROAD, MAJOR_ROAD, SHADOW = 7, 8, 9, 10, 11
ROOF0 = 20  # roofs use ids ROOF0 .. ROOF0 + len(ROOFS) - 1
AREA_IDS = {"farmland": FARMLAND, "grass": GRASS, "forest": FOREST, "bare": BARE, "parking": PARKING, "water": WATER}
LINE_IDS = {"waterway": (WATER, WATERWAY_WIDTH), "railway": (RAILWAY, RAIL_WIDTH), "path": (PATH, ROAD_WIDTHS["path"]),
            "minor_road": (MINOR_ROAD, ROAD_WIDTHS["minor_road"]), "major_road": (MAJOR_ROAD, ROAD_WIDTHS["major_road"])}
SUMMER = {BACKGROUND: (148, 138, 118), FARMLAND: (168, 160, 96), GRASS: (92, 138, 64), FOREST: (42, 82, 44),
          BARE: (188, 172, 140), PARKING: (108, 108, 110), WATER: (38, 66, 92), RAILWAY: (84, 74, 66),
          PATH: (176, 166, 150), MINOR_ROAD: (122, 120, 118), MAJOR_ROAD: (88, 88, 94), SHADOW: (34, 37, 44)}
AUTUMN = {**SUMMER, FARMLAND: (150, 120, 80), GRASS: (128, 130, 72), FOREST: (104, 86, 46)}
ROOFS = [(152, 62, 52), (120, 121, 126), (182, 172, 160), (88, 90, 100), (160, 102, 70), (68, 78, 88)]
TEXTURE = {FOREST: 16.0, GRASS: 8.0, FARMLAND: 10.0, BARE: 9.0, WATER: 3.0, BACKGROUND: 9.0}  # pixel noise sigma


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
    fn = Transformer.from_crs(4326, epsg, always_xy=True).transform
    return {k: [shapely.transform(g, fn, interleaved=False) for g in v] for k, v in features.items()}


def class_raster(features_utm: dict[str, list[BaseGeometry]], bounds, res: float, look: Look, seed: int
                 ) -> np.ndarray:
    """The class id of every pixel of ``bounds`` at ``res``."""
    xmin, ymin, xmax, ymax = bounds
    width, height = int(math.ceil((xmax - xmin) / res)), int(math.ceil((ymax - ymin) / res))
    transform = from_origin(xmin + look.shift_m[0], ymax + look.shift_m[1], res, res)
    shapes: list[tuple[BaseGeometry, int]] = []
    for name, cid in AREA_IDS.items():
        shapes += [(g, cid) for g in features_utm.get(name, []) if not g.is_empty]
    for name, (cid, width_m) in LINE_IDS.items():
        shapes += [(g.buffer(width_m / 2, cap_style="flat"), cid) for g in features_utm.get(name, []) if not g.is_empty]
    rng = np.random.default_rng(seed)
    buildings = [g for g in features_utm.get("building", []) if not g.is_empty]
    keep = rng.random(len(buildings)) >= look.vanished_buildings
    roofs = rng.integers(0, len(ROOFS), len(buildings))
    heights = rng.uniform(6, 24, len(buildings))
    # Shadows fall away from the sun, longer when it is low.
    away = math.radians(look.sun_azimuth + 180)
    for g, k, h in zip(buildings, keep, heights, strict=True):
        if k:
            length = h / math.tan(math.radians(look.sun_elevation))
            shapes.append((translate(g, length * math.sin(away), length * math.cos(away)), SHADOW))
    shapes += [(g, ROOF0 + int(r)) for g, k, r in zip(buildings, keep, roofs, strict=True) if k]
    if not shapes:
        return np.zeros((height, width), np.uint8)
    return rasterize(shapes, out_shape=(height, width), transform=transform, fill=BACKGROUND, dtype="uint8")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int, amplitude: float) -> np.ndarray:
    """Low-frequency variation: coarse random values, bilinearly upsampled."""
    gh, gw = shape[0] // cell + 2, shape[1] // cell + 2
    coarse = rng.normal(0, amplitude, (gh, gw)).astype(np.float32)
    ys = np.arange(shape[0]) / cell
    xs = np.arange(shape[1]) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def colourise(classes: np.ndarray, look: Look, seed: int) -> np.ndarray:
    """RGB (3, H, W) uint8 in 1..255 from a class raster."""
    rng = np.random.default_rng(seed + 1)
    palette = np.zeros((256, 3), np.float32)
    for cid, colour in (AUTUMN if look.season == "autumn" else SUMMER).items():
        palette[cid] = colour
    for i, colour in enumerate(ROOFS):
        palette[ROOF0 + i] = colour
    rgb = palette[classes]  # H, W, 3
    sigma = np.full(256, 5.0, np.float32)
    for cid, s in TEXTURE.items():
        sigma[cid] = s
    rgb += (rng.standard_normal(classes.shape, dtype=np.float32) * sigma[classes])[..., None]
    rgb += _smooth_noise(rng, classes.shape, 48, 7.0)[..., None]
    canopy = classes == FOREST  # tree crowns: darker blobs at ~3 m
    rgb[canopy] += _smooth_noise(rng, classes.shape, 6, 14.0)[canopy][:, None]
    if look.haze:
        rgb = rgb * (1 - look.haze) + np.array([205, 205, 210], np.float32) * look.haze
    return np.moveaxis(np.clip(rgb, 1, 255).astype(np.uint8), -1, 0)
