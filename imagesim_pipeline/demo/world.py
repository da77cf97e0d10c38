"""Build the demo world: ARD deliveries rendered from OpenStreetMap extracts.

No real high-resolution imagery with real OSM of the same place can be had offline, so the
demo renders it: per region, two acquisitions (summer and autumn; different sun, haze, a small
misregistration, a few buildings gone), cut into the ARD layout by the same ingest that real
imagery goes through. The regions are the real Helsinki and Kotka extracts and, by default, a
procedural synthetic area (:mod:`imagesim_pipeline.demo.synthetic`) big enough for a training
dataset worth learning from. Outside a real extract's bounding box the cells hold no data, like
the edge of a real strip.

Renders are drawn in strips of rows into the intermediate GeoTIFF, so memory stays bounded
whatever the region's size. Besides the deliveries, the world writes to the bucket:

* ``demo/changes.parquet`` — the ground truth of what changed between acquisitions: one row
  per chip place (zoom-17 cell) and pair of acquisitions where buildings vanished;
* ``demo/world.json`` — the seed, the regions, their acquisitions and looks;
* ``demo/synthetic.osm.pbf`` — the synthetic area's extract, for ``osm_data`` to read.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import geometry_mask
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from imagesim_pipeline.ard.grid import cells_covering, zone_of_longitude
from imagesim_pipeline.ard.ingest import ingest
from imagesim_pipeline.demo.features import Layers, load_layers
from imagesim_pipeline.demo.render import Look, Scene, colourise, global_origin, to_utm, vanished
from imagesim_pipeline.demo.truth import CHANGES_KEY
from imagesim_pipeline.storage import Bucket, layout

RESOLUTION = 0.5  # metres, the real extracts' renders
SYNTHETIC_KM = 8.0  # default side of the synthetic area (snapped to whole 625 m blocks: 8.125 km)
SYNTHETIC_RESOLUTION = 5000 / 10112  # the ARD cell's own pixel size: the render lands on the cell grid
STRIP_ROWS = 512  # rows rendered at a time
WORKERS = max(1, min(4, os.cpu_count() or 1))  # processes rendering and ingesting acquisitions side by side
WORLD_KEY = "demo/world.json"
ACQUISITIONS = [
    # (catalog id suffix, date, look)
    ("A", date(2023, 6, 15), Look("summer", sun_azimuth=160, sun_elevation=50)),
    ("B", date(2023, 10, 3), Look("autumn", sun_azimuth=200, sun_elevation=25, haze=0.12, shift_m=(0.6, -0.4),
                                  vanished_buildings=0.04)),
]
CHANGES_SCHEMA = pa.schema([
    ("place", pa.string()),  # zoom-17 cell id, the chip's place: Z35-01313310300312301
    ("cell", pa.string()),  # its level-12 cell (the delivery)
    ("region", pa.string()),
    ("catalog_id_before", pa.string()),
    ("catalog_id_after", pa.string()),
    ("date_before", pa.date32()),
    ("date_after", pa.date32()),
    ("vanished_buildings", pa.int32()),  # buildings standing before and gone after that meet the place
    ("vanished_area_m2", pa.float64()),  # their footprint area inside the place
    ("vanished_share", pa.float64()),  # that area over the place's area
    ("osm_ids", pa.list_(pa.string())),  # the vanished buildings: w<way id> or r<relation id>
])


@dataclass
class Region:
    """One extract to render: its catalog id prefix and, optionally, an explicit render area."""

    name: str  # catalog id prefix
    pbf: Path
    bounds: tuple[float, float, float, float] | None = None  # UTM render area (default: the extract's box)
    epsg: int | None = None  # CRS of ``bounds``
    resolution: float = RESOLUTION
    osm_key: str | None = None  # publish the extract at this bucket key (``osm_data`` reads it there)

    @property
    def aligned(self) -> bool:
        """Whether the render area is given (on the ARD pixel grid, all of it valid data)."""
        return self.bounds is not None and self.epsg is not None


def extract_bounds(pbf: Path) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of an OSM extract: its header's box, else its nodes' extent."""
    import osmium

    header = osmium.io.Reader(str(pbf), osmium.osm.osm_entity_bits.NOTHING).header().box()
    if header.valid():
        return (header.bottom_left.lon, header.bottom_left.lat, header.top_right.lon, header.top_right.lat)
    # No bounding box in the header (e.g. a generated extract): the extent of its nodes.
    lons, lats = [], []
    for node in osmium.FileProcessor(str(pbf), osmium.osm.NODE):
        if isinstance(node, osmium.osm.Node) and node.location.valid():
            lons.append(node.location.lon)
            lats.append(node.location.lat)
    if not lons:
        raise ValueError(f"{pbf}: the extract has no located nodes")
    return (min(lons), min(lats), max(lons), max(lats))


def region_frame(region: Region) -> tuple[int, BaseGeometry, tuple[float, float, float, float]]:
    """(EPSG, valid-data footprint, pixel-aligned render bounds) of a region, in its UTM zone."""
    if region.bounds is not None and region.epsg is not None:  # region.aligned
        return region.epsg, box(*region.bounds), region.bounds
    west, south, east, north = extract_bounds(region.pbf)
    zone = zone_of_longitude((west + east) / 2)
    epsg = (32600 if south >= 0 else 32700) + zone
    to_utm_fn = Transformer.from_crs(4326, epsg, always_xy=True).transform
    outline = box(west, south, east, north).segmentize(0.001)
    footprint = shapely.transform(outline, to_utm_fn, interleaved=False)
    res = region.resolution
    xmin, ymin, xmax, ymax = (np.floor(np.array(footprint.bounds) / res) * res).tolist()
    return epsg, footprint, (xmin, ymin, xmax, ymax)


def raster_shape(bounds: tuple[float, float, float, float], res: float) -> tuple[int, int]:
    """(height, width) in pixels of ``bounds`` at ``res`` (a partial pixel counts)."""
    xmin, ymin, xmax, ymax = bounds
    return math.ceil((ymax - ymin) / res - 1e-6), math.ceil((xmax - xmin) / res - 1e-6)


def render_rgb(scene: Scene, look: Look, seed: int, bounds: tuple[float, float, float, float], res: float,
               row0: int, rows: int, footprint: BaseGeometry | None = None) -> np.ndarray:
    """Rows ``row0 .. row0 + rows`` of the acquisition's RGB over ``bounds`` (0 outside ``footprint``)."""
    xmin, _, _, ymax = bounds
    _, width = raster_shape(bounds, res)
    top = ymax - row0 * res
    classes = scene.classes(xmin, top, res, (rows, width))
    grow, gcol = global_origin(xmin, ymax, res)
    rgb = colourise(classes, look, seed, (grow + row0, gcol))
    if footprint is not None:
        outside = geometry_mask([footprint], out_shape=(rows, width), transform=from_origin(xmin, top, res, res))
        rgb[:, outside] = 0
    return rgb


def write_render(path: Path, scene: Scene, look: Look, seed: int, epsg: int,
                 bounds: tuple[float, float, float, float], res: float, footprint: BaseGeometry | None = None,
                 strip_rows: int = STRIP_ROWS) -> None:
    """Render an acquisition into a GeoTIFF strip by strip (uncompressed: it is read once, by ingest)."""
    height, width = raster_shape(bounds, res)
    xmin, _, _, ymax = bounds
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs=f"EPSG:{epsg}", transform=from_origin(xmin, ymax, res, res), nodata=0) as dst:
        for row0 in range(0, height, strip_rows):
            rows = min(strip_rows, height - row0)
            dst.write(render_rgb(scene, look, seed, bounds, res, row0, rows, footprint), window=Window(0, row0,
                                                                                                   width, rows))


def change_rows(region: str, buildings: list[BaseGeometry], ids: list[str], gone_before: np.ndarray,
                gone_after: np.ndarray, footprint: BaseGeometry, epsg: int, before: tuple[str, date],
                after: tuple[str, date]) -> list[dict]:
    """Per zoom-17 place: the buildings standing ``before`` and gone ``after`` that meet it."""
    changed = np.flatnonzero(~gone_before & gone_after)
    geoms = np.array([buildings[i] for i in changed], dtype=object)
    if not len(geoms):
        return []
    geoms = shapely.intersection(geoms, footprint)  # only what the images show
    keep = ~shapely.is_empty(geoms) & (shapely.area(geoms) > 0)
    geoms, changed = geoms[keep], changed[keep]
    if not len(geoms):
        return []
    places = cells_covering(shapely.union_all(geoms), epsg, 17)
    boxes = np.array([box(*p.bounds) for p in places], dtype=object)
    place_i, geom_i = shapely.STRtree(geoms).query(boxes, predicate="intersects")
    areas = shapely.area(shapely.intersection(boxes[place_i], geoms[geom_i]))
    rows: dict[int, dict] = {}
    for p, g, a in zip(place_i.tolist(), geom_i.tolist(), areas.tolist(), strict=True):
        if a <= 0:
            continue
        place = places[p]
        row = rows.setdefault(p, {
            "place": place.id, "cell": place.ancestor(12).id, "region": region,
            "catalog_id_before": before[0], "catalog_id_after": after[0], "date_before": before[1],
            "date_after": after[1], "vanished_buildings": 0, "vanished_area_m2": 0.0, "vanished_share": 0.0,
            "osm_ids": []})
        row["vanished_buildings"] += 1
        row["vanished_area_m2"] += a
        row["osm_ids"].append(ids[changed[g]])
    out = sorted(rows.values(), key=lambda r: r["place"])
    for row in out:
        row["vanished_area_m2"] = round(row["vanished_area_m2"], 3)
        row["vanished_share"] = round(row["vanished_area_m2"] / 156.25**2, 6)
        row["osm_ids"] = sorted(row["osm_ids"])
    return out


def render_acquisition(region: Region, index: int, seed: int, path: Path) -> Path:
    """Render acquisition ``index`` of :data:`ACQUISITIONS` of the region as a GeoTIFF at ``path``."""
    epsg, footprint, bounds = region_frame(region)
    layers = load_layers(region.pbf)
    look = ACQUISITIONS[index][2]
    acq_seed = seed * 1000 + index
    scene = Scene.build(to_utm(layers.geoms, epsg), look, acq_seed, layers.building_heights, world_seed=seed)
    write_render(path, scene, look, acq_seed, epsg, bounds, region.resolution, None if region.aligned else footprint)
    return path


def region_changes(region: Region, seed: int, layers: Layers | None = None) -> list[dict]:
    """The change ground truth of a region: places where buildings vanished between acquisitions."""
    epsg, footprint, _ = region_frame(region)
    layers = layers or load_layers(region.pbf)
    buildings = to_utm({"building": layers.geoms.get("building", [])}, epsg)["building"]
    rows: list[dict] = []
    gone_before = None
    for i, (suffix, day, look) in enumerate(ACQUISITIONS):
        gone = vanished(len(buildings), look, seed * 1000 + i)
        if gone_before is not None:
            prev_suffix, prev_day, _ = ACQUISITIONS[i - 1]
            rows += change_rows(region.name, buildings, layers.building_ids, gone_before, gone, footprint, epsg,
                                (f"{region.name}{prev_suffix}", prev_day), (f"{region.name}{suffix}", day))
        gone_before = gone
    return rows


def _deliver(bucket: Bucket | str, region: Region, index: int, seed: int, workdir: str) -> tuple[str, date, list[str]]:
    """Render one acquisition and ingest it (a worker's task): (catalog id, date, cells written)."""
    from imagesim_pipeline.storage import open_bucket

    store = open_bucket(bucket) if isinstance(bucket, str) else bucket
    suffix, day, _ = ACQUISITIONS[index]
    catalog_id = f"{region.name}{suffix}"
    path = render_acquisition(region, index, seed, Path(workdir) / f"{catalog_id}.tif")
    try:
        # An aligned render already lies on the cells' pixel grid: nearest copies it exactly.
        result = ingest(path, store, catalog_id, day, resampling="nearest" if region.aligned else "bilinear")
    finally:
        path.unlink(missing_ok=True)
    return catalog_id, day, result.cells


def changes_table(rows: list[dict]) -> pa.Table:
    """The ground-truth changes table (``CHANGES_SCHEMA``) from its rows."""
    return pa.Table.from_pylist(rows, schema=CHANGES_SCHEMA)


def default_regions(pbfs: dict[str, Path]) -> list[Region]:
    """The demo's two regions: Helsinki and Kotka (the sample extracts)."""
    return [Region("HELSINKI", pbfs["Helsinki.osm.pbf"]), Region("KOTKA", pbfs["test.osm.pbf"])]


def build_world(bucket: Bucket, regions: list[Region], seed: int = 7,
                progress: Callable[[str], None] = print, workers: int = 1) -> list[str]:
    """Render every region's acquisitions and ingest them into ``bucket``; returns the cells written.

    With ``workers`` > 1, acquisitions are rendered and ingested in that many processes (the
    bucket is reopened there from its URI). Also writes the change ground truth, the world's
    description and the published extracts (see the module docstring), each atomically.
    """
    for region in regions:
        if region.osm_key:
            bucket.upload_file(region.pbf, region.osm_key)
    jobs = [(r, i) for r in regions for i in range(len(ACQUISITIONS))]
    jobs.sort(key=lambda job: -_pixels(job[0]))  # the biggest first, so the last ones fill the gaps
    delivered: dict[tuple[str, int], tuple[str, date, list[str]]] = {}

    def done(region: Region, index: int, out: tuple[str, date, list[str]]) -> None:
        delivered[(region.name, index)] = out
        catalog_id, day, written = out
        progress(f"{catalog_id} ({day}): {len(written)} cell(s) {', '.join(written)}")

    with tempfile.TemporaryDirectory(prefix="imagesim-demo-") as tmp:
        if workers <= 1:
            changes = [row for region in regions for row in region_changes(region, seed)]
            for region, index in jobs:
                done(region, index, _deliver(bucket, region, index, seed, tmp))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(_deliver, bucket.uri, region, index, seed, tmp): (region, index)
                           for region, index in jobs}
                try:
                    changes = [row for region in regions for row in region_changes(region, seed)]
                    for future in as_completed(futures):
                        done(*futures[future], future.result())
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    cells = sorted({c for _, _, written in delivered.values() for c in written})
    sink = io.BytesIO()
    pq.write_table(changes_table(changes), sink)
    bucket.write_bytes(CHANGES_KEY, sink.getvalue())
    described = []
    for region in regions:
        epsg, _, bounds = region_frame(region)
        acquisitions = [{"catalog_id": delivered[(region.name, i)][0], "date": day.isoformat(), "look": asdict(look),
                         "cells": delivered[(region.name, i)][2]} for i, (_, day, look) in enumerate(ACQUISITIONS)]
        described.append({"name": region.name, "extract": region.osm_key or region.pbf.name, "epsg": epsg,
                          "bounds": list(bounds), "resolution": region.resolution, "acquisitions": acquisitions,
                          "changed_places": sum(1 for row in changes if row["region"] == region.name)})
    bucket.write_text(WORLD_KEY, json.dumps({"seed": seed, "regions": described, "changes": CHANGES_KEY}, indent=2))
    progress(f"change ground truth: {len(changes)} place(s) with vanished buildings in {bucket.url(CHANGES_KEY)}")
    return cells


def _pixels(region: Region) -> float:
    _, _, (xmin, ymin, xmax, ymax) = region_frame(region)
    return (xmax - xmin) * (ymax - ymin) / region.resolution**2


def synthetic_region(workdir: Path, km: float = SYNTHETIC_KM, seed: int = 7) -> Region:
    """A procedural extract of about ``km`` x ``km`` (whole 625 m blocks) north-west of Helsinki.

    It is rendered at the ARD cell's own pixel size, aligned with the ARD grid, so every chip
    place inside it is all data; the extract is published at ``demo/synthetic.osm.pbf``.
    """
    from imagesim_pipeline.demo.synthetic import EPSG, generate_extract

    path = workdir / f"synthetic-{km:g}km-{seed}.osm.pbf"
    counts = generate_extract(path, km, seed)
    return Region("SYNTH", path, bounds=counts["utm_bounds"], epsg=EPSG, resolution=SYNTHETIC_RESOLUTION,
                  osm_key=layout.SYNTHETIC_OSM_KEY)
