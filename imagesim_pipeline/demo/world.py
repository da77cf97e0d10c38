"""Build the demo world: ARD deliveries rendered from real OpenStreetMap extracts.

No real high-resolution imagery with real OSM of the same place can be had offline, so the
demo renders it: per extract, two acquisitions (summer and autumn; different sun, haze, a small
misregistration, a few buildings gone), cut into the ARD layout by the same ingest that real
imagery goes through. Outside the extract's bounding box the cells hold no data, like the
edge of a real strip. ``scale_km`` adds a procedural synthetic extract of that size.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from pyproj import Transformer
from shapely.geometry import box

from imagesim_pipeline.ard.grid import zone_of_longitude
from imagesim_pipeline.ard.ingest import ingest
from imagesim_pipeline.demo.features import load_features
from imagesim_pipeline.demo.render import Look, class_raster, colourise, to_utm
from imagesim_pipeline.storage import Bucket

RESOLUTION = 0.5  # metres
ACQUISITIONS = [
    # (catalog id suffix, date, look)
    ("A", date(2023, 6, 15), Look("summer", sun_azimuth=160, sun_elevation=50)),
    ("B", date(2023, 10, 3), Look("autumn", sun_azimuth=200, sun_elevation=25, haze=0.12, shift_m=(0.6, -0.4),
                                  vanished_buildings=0.04)),
]


@dataclass
class Region:
    name: str  # catalog id prefix
    pbf: Path


def extract_bounds(pbf: Path) -> tuple[float, float, float, float]:
    import osmium

    header = osmium.io.Reader(str(pbf), osmium.osm.osm_entity_bits.NOTHING).header().box()
    if header.valid():
        return (header.bottom_left.lon, header.bottom_left.lat, header.top_right.lon, header.top_right.lat)
    # No bounding box in the header (e.g. a generated extract): the extent of its nodes.
    lons, lats = [], []
    for node in osmium.FileProcessor(str(pbf), osmium.osm.NODE):
        if node.location.valid():
            lons.append(node.location.lon)
            lats.append(node.location.lat)
    if not lons:
        raise ValueError(f"{pbf}: the extract has no located nodes")
    return (min(lons), min(lats), max(lons), max(lats))


def render_region(region: Region, workdir: Path, seed: int, res: float = RESOLUTION
                  ) -> list[tuple[str, date, Path]]:
    """Render the region's acquisitions as GeoTIFFs in its UTM zone: [(catalog id, date, path)]."""
    west, south, east, north = extract_bounds(region.pbf)
    zone = zone_of_longitude((west + east) / 2)
    epsg = (32600 if south >= 0 else 32700) + zone
    to_utm_fn = Transformer.from_crs(4326, epsg, always_xy=True).transform
    outline = box(west, south, east, north).segmentize(0.001)
    import shapely

    footprint = shapely.transform(outline, to_utm_fn, interleaved=False)
    xmin, ymin, xmax, ymax = (np.floor(np.array(footprint.bounds) / res) * res).tolist()
    features = to_utm(load_features(region.pbf), epsg)
    out = []
    for i, (suffix, day, look) in enumerate(ACQUISITIONS):
        classes = class_raster(features, (xmin, ymin, xmax, ymax), res, look, seed * 1000 + i)
        rgb = colourise(classes, look, seed * 1000 + i)
        transform = rasterio.transform.from_origin(xmin, ymax, res, res)
        # No data outside the extract's bounding box: the edge of the "strip".
        from rasterio.features import geometry_mask

        outside = geometry_mask([footprint], out_shape=classes.shape, transform=transform)
        rgb[:, outside] = 0
        path = workdir / f"{region.name}{suffix}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3,
                           dtype="uint8", crs=f"EPSG:{epsg}", transform=transform, nodata=0, tiled=True,
                           compress="deflate") as dst:
            dst.write(rgb)
        out.append((f"{region.name}{suffix}", day, path))
    return out


def default_regions(pbfs: dict[str, Path]) -> list[Region]:
    return [Region("HELSINKI", pbfs["Helsinki.osm.pbf"]), Region("KOTKA", pbfs["test.osm.pbf"])]


def build_world(bucket: Bucket, regions: list[Region], seed: int = 7,
                progress: Callable[[str], None] = print) -> list[str]:
    """Render every region and ingest it into ``bucket``; returns the cells written."""
    cells: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="imagesim-demo-") as tmp:
        for region in regions:
            for catalog_id, day, path in render_region(region, Path(tmp), seed):
                result = ingest(path, bucket, catalog_id, day)
                cells.update(result.cells)
                progress(f"{catalog_id} ({day}): {len(result.cells)} cell(s) {', '.join(result.cells)}")
                path.unlink()
    return sorted(cells)


def synthetic_region(workdir: Path, km: float) -> Region:
    """A procedural extract of ``km`` x ``km`` near Helsinki, for bigger worlds."""
    from imagesim_pipeline.demo.synthetic import generate_extract

    path = workdir / f"synthetic-{km:g}km.osm.pbf"
    generate_extract(path, km)
    return Region("SYNTH", path)
