"""Geometries from an ``osm_data.json`` document, in the cell's UTM projection.

Tagged nodes become points; ways become lines, or polygons when closed and tagged as an area
(OSM's usual area rules); ``type=multipolygon`` relations become polygons assembled from their
member ways (outer minus inner rings). Nothing here is fatal: ways with vertices missing from
the extract are split (lines) or skipped (polygons), relations whose rings do not close keep the
rings that do, self-intersecting polygons are repaired with ``make_valid``, and every such case
is reported as a problem that names the elements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer

POLYGON, LINE, POINT = 0, 1, 2
KIND_NAMES = ("polygon", "line", "point")

_AREA_KEYS = {"building", "building:part", "landuse", "leisure", "amenity", "shop", "tourism", "place", "military",
              "aeroway", "historic", "man_made", "parking", "office", "craft", "area:highway", "golf", "landcover"}
_NOT_AREA_NATURAL = {"coastline", "cliff", "ridge", "arete", "tree_row", "valley", "gorge", "earth_bank"}
_AREA_WATERWAY = {"riverbank", "dock", "boatyard", "dam"}


def is_area(tags: dict[str, str]) -> bool:
    """Whether a closed way with these tags is an area (OSM's conventions, as renderers apply them)."""
    area = tags.get("area")
    if area == "yes":
        return True
    if area == "no":
        return False
    if any(k in tags and tags[k] != "no" for k in _AREA_KEYS):
        return True
    natural = tags.get("natural")
    if natural is not None and natural not in _NOT_AREA_NATURAL:
        return True
    return tags.get("waterway") in _AREA_WATERWAY or tags.get("railway") == "platform"


@lru_cache(maxsize=64)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


@dataclass
class OsmFeatures:
    """Features of one document: parallel arrays of UTM geometries, kinds and tags."""

    geometries: np.ndarray  # shapely geometries (object array)
    kinds: np.ndarray  # int8: POLYGON, LINE, POINT
    tags: list[dict[str, str]]
    ids: list[str]  # "node/1", "way/2", "relation/3"
    problems: list[str] = field(default_factory=list)
    repaired: int = 0

    def __len__(self) -> int:
        return len(self.tags)

    def kind_counts(self) -> dict[str, int]:
        """Features per geometry kind."""
        return {name: int((self.kinds == k).sum()) for k, name in enumerate(KIND_NAMES)}


def _coords(geometry: Iterable[dict[str, float] | None]) -> list[list[tuple[float, float]]]:
    """The runs of known vertices of a way (a null vertex splits it)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for vertex in geometry:
        if vertex is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((vertex["lon"], vertex["lat"]))
    return [r for r in runs if r]


def _examples(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (" …" if len(ids) > n else "")


class _Builder:
    """Collects vertices of simple geometries in flat arrays, to build them in one vectorized call."""

    def __init__(self) -> None:
        self.x: list[float] = []
        self.y: list[float] = []
        self.part: list[int] = []  # vertex -> part index
        self.part_kind: list[int] = []
        self.part_feature: list[int] = []  # part -> feature index

    def add(self, feature: int, kind: int, coords: list[tuple[float, float]]) -> None:
        part = len(self.part_kind)
        self.part_kind.append(kind)
        self.part_feature.append(feature)
        for lon, lat in coords:
            self.x.append(lon)
            self.y.append(lat)
        self.part.extend([part] * len(coords))


def osm_features(data: dict[str, Any], epsg: int) -> OsmFeatures:
    """Every tagged feature of the document as a UTM geometry (``epsg``), with what went wrong."""
    builder = _Builder()
    tags: list[dict[str, str]] = []
    ids: list[str] = []
    kinds: list[int] = []
    complex_geoms: dict[int, Any] = {}  # feature index -> WGS84 geometry built here (relations)
    broken_polygons: list[str] = []
    broken_relations: list[str] = []

    for node in data.get("nodes", []):
        node_tags = node.get("tags")
        if node_tags and "lat" in node:
            builder.add(len(tags), POINT, [(node["lon"], node["lat"])])
            tags.append(node_tags)
            ids.append(f"node/{node['id']}")
            kinds.append(POINT)

    for way in data.get("ways", []):
        way_tags = way.get("tags")
        geometry = way.get("geometry")
        if not way_tags or not geometry:
            continue
        runs = _coords(geometry)
        complete = len(runs) == 1 and len(runs[0]) == len(geometry)
        closed = complete and len(geometry) >= 4 and geometry[0] == geometry[-1]
        if closed and is_area(way_tags):
            kind = POLYGON
            builder.add(len(tags), POLYGON, runs[0])
        elif not complete:
            if is_area(way_tags) and way.get("nodes", [0])[0] == way.get("nodes", [1])[-1]:
                broken_polygons.append(f"way/{way['id']}")
                continue
            kind = LINE
            feature = len(tags)
            for run in runs:
                if len(run) >= 2:
                    builder.add(feature, LINE, run)
            if not any(len(r) >= 2 for r in runs):
                continue
        else:
            if len(runs[0]) < 2:
                continue
            kind = LINE
            builder.add(len(tags), LINE, runs[0])
        tags.append(way_tags)
        ids.append(f"way/{way['id']}")
        kinds.append(kind)

    for relation in data.get("relations", []):
        rel_tags = relation.get("tags") or {}
        if rel_tags.get("type") != "multipolygon":
            continue
        polygon, missing = _multipolygon(relation)
        if missing:
            broken_relations.append(f"relation/{relation['id']}")
        if polygon is None or polygon.is_empty:
            continue
        complex_geoms[len(tags)] = polygon
        tags.append({k: v for k, v in rel_tags.items() if k != "type"})
        ids.append(f"relation/{relation['id']}")
        kinds.append(POLYGON)

    geometries = _build(builder, len(tags), epsg)
    if complex_geoms:
        index = np.fromiter(complex_geoms, dtype=np.int64)
        to_utm = _to_utm(epsg).transform
        geometries[index] = shapely.transform(np.array(list(complex_geoms.values()), dtype=object),
                                              lambda xy: np.column_stack(to_utm(xy[:, 0], xy[:, 1])))
    features = OsmFeatures(geometries, np.asarray(kinds, dtype=np.int8), tags, ids)
    _repair(features)
    if broken_polygons:
        features.problems.append(f"{len(broken_polygons)} area way(s) skipped: vertices missing from the extract "
                                 f"(e.g. {_examples(broken_polygons)})")
    if broken_relations:
        features.problems.append(f"{len(broken_relations)} multipolygon relation(s) with member ways missing or "
                                 f"incomplete; only their closed rings are used (e.g. {_examples(broken_relations)})")
    return features


def _build(builder: _Builder, n: int, epsg: int) -> np.ndarray:
    geometries = np.empty(n, dtype=object)
    if not builder.part_kind:
        return geometries
    x, y = _to_utm(epsg).transform(np.asarray(builder.x), np.asarray(builder.y))
    coords = np.column_stack([x, y])
    part = np.asarray(builder.part, dtype=np.int64)
    part_kind = np.asarray(builder.part_kind, dtype=np.int8)
    part_feature = np.asarray(builder.part_feature, dtype=np.int64)
    for kind in (POINT, LINE, POLYGON):
        parts = np.flatnonzero(part_kind == kind)
        if not len(parts):
            continue
        vertex = np.isin(part, parts)
        # renumber the parts of this kind 0..k-1, in order
        local = np.searchsorted(parts, part[vertex])
        if kind == POINT:
            geoms = shapely.points(coords[vertex])
        elif kind == LINE:
            geoms = shapely.linestrings(coords[vertex], indices=local)
        else:
            geoms = shapely.polygons(shapely.linearrings(coords[vertex], indices=local))
        owners = part_feature[parts]
        single = np.bincount(owners, minlength=n)[owners] == 1
        geometries[owners[single]] = geoms[single]
        if not single.all():  # a way split by missing vertices: one MultiLineString
            multi_owners = owners[~single]
            for owner in np.unique(multi_owners):
                geometries[owner] = shapely.multilinestrings(list(geoms[~single][multi_owners == owner]))
    return geometries


def _multipolygon(relation: dict[str, Any]) -> tuple[Any, bool]:
    """(WGS84 polygon of the relation or None, whether members were missing or rings open).

    Member ways are merged into closed rings per role; rings nest by containment, so each
    outer ring minus the inner rings directly inside it is part of the area (an island in a
    lake in a forest is forest again). An inner ring whose outer is missing adds nothing.
    """
    lines: dict[str, list[Any]] = {"outer": [], "inner": []}
    missing = False
    for member in relation.get("members", []):
        if member.get("type") != "way":
            continue
        geometry = member.get("geometry") or [None]
        runs = _coords(geometry)
        if len(runs) != 1 or len(runs[0]) != len(geometry):
            missing = True
        role = "inner" if member.get("role") == "inner" else "outer"
        lines[role].extend(shapely.linestrings(run) for run in runs if len(run) >= 2)
    rings: list[Any] = []  # shapely polygons
    is_outer: list[bool] = []
    for role, parts in lines.items():
        if not parts:
            continue
        merged = shapely.get_parts(shapely.line_merge(shapely.multilinestrings(parts)))
        closed = [g for g in merged if g.is_closed and shapely.get_num_coordinates(g) >= 4]
        missing = missing or len(closed) < len(merged)
        rings.extend(shapely.make_valid(shapely.Polygon(g.coords)) for g in closed)
        is_outer.extend([role == "outer"] * len(closed))
    if not any(is_outer):
        return None, True
    polygons = np.array(rings, dtype=object)
    outer = np.array(is_outer)
    container, contained = shapely.STRtree(polygons).query(polygons, predicate="contains_properly")
    depth = np.bincount(contained, minlength=len(polygons))
    pieces = []
    for i in np.flatnonzero(outer):
        holes = contained[(container == i) & ~outer[contained] & (depth[contained] == depth[i] + 1)]
        pieces.append(shapely.difference(polygons[i], shapely.union_all(polygons[holes])) if len(holes)
                      else polygons[i])
    return shapely.union_all(pieces), missing


def _repair(features: OsmFeatures) -> None:
    """Make invalid polygons valid (keeping their polygonal part); report which."""
    polygonal = np.flatnonzero(features.kinds == POLYGON)
    if not len(polygonal):
        return
    geoms = features.geometries[polygonal]
    invalid = ~shapely.is_valid(geoms)
    if not invalid.any():
        return
    fixed = shapely.make_valid(geoms[invalid])
    # keep only the polygonal parts (make_valid may add the lines of a collapsed spike)
    for i, geom in zip(polygonal[invalid], fixed, strict=True):
        parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
        features.geometries[i] = shapely.union_all(parts) if parts else shapely.Polygon()
    features.repaired = int(invalid.sum())
    names = [features.ids[i] for i in polygonal[invalid]]
    features.problems.append(f"{features.repaired} invalid polygon(s) repaired with make_valid "
                             f"(e.g. {_examples(names)})")


__all__ = ["KIND_NAMES", "LINE", "OsmFeatures", "POINT", "POLYGON", "is_area", "osm_features"]
