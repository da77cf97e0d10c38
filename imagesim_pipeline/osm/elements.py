"""The ``osm_data.json`` format and the selection rule shared by both OSM sources.

``osm_data.json`` holds, for one level-12 cell, the raw OpenStreetMap elements around it as
Overpass API JSON elements (``out geom``)::

    {"quadkey": "120020223133", "cell": "Z33-120020223133",
     "bbox": [south, west, north, east],
     "provenance": {"source": "pbf" | "overpass", "extract"|"endpoint": ..., "query": ...,
                    "snapshot": "2024-01-01T00:00:00Z", "created": ..., "problems": [...]},
     "nodes": [...], "ways": [...], "relations": [...]}

Selection (identical for the PBF and the Overpass route): the cell's WGS84 bounding box grown
by a margin; *tagged* nodes inside it (untagged nodes are way vertices, already in the ways'
``geometry``); ways with a vertex inside or a segment crossing it; relations with a member node
inside it or a selected member way. Polygons that enclose the whole box without an edge in it
are not selected, as with Overpass ``(bbox)`` queries. No tag filtering happens here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, overload

from shapely.geometry import LineString, box

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.errors import ImagesimError, TransientError

DEFAULT_MARGIN_DEG = 0.0005  # ~50 m: features just outside the cell still reach its chips
PRECISION = 7  # OSM stores coordinates with 7 decimals


class OsmError(ImagesimError):
    """OSM data could not be obtained; the message names the cell or file and what to do."""


class OverpassUnavailableError(OsmError, TransientError):
    """The Overpass API kept timing out or refusing (busy): worth retrying later."""


@dataclass(frozen=True)
class CellBox:
    """A cell and its selection box in WGS84 degrees."""

    cell: ArdCell
    west: float
    south: float
    east: float
    north: float

    @classmethod
    def of(cls, cell: ArdCell, margin: float = DEFAULT_MARGIN_DEG) -> CellBox:
        """The box of ``cell`` in WGS84, widened by ``margin`` degrees."""
        west, south, east, north = cell.wgs84_bounds
        return cls(cell, west - margin, south - margin, east + margin, north + margin)

    @property
    def overpass_bbox(self) -> str:
        """``south,west,north,east`` as Overpass wants it."""
        return f"{self.south:.7f},{self.west:.7f},{self.north:.7f},{self.east:.7f}"

    def contains(self, lon: float, lat: float) -> bool:
        """Whether the point lies in the box."""
        return self.west <= lon <= self.east and self.south <= lat <= self.north

    def geometry(self):
        """The box as a shapely polygon."""
        return box(self.west, self.south, self.east, self.north)

    def way_selected(self, coords: list[tuple[float, float] | None]) -> bool:
        """A vertex inside, or a segment crossing the box."""
        points = [c for c in coords if c is not None]
        if not points:
            return False
        if any(self.contains(lon, lat) for lon, lat in points):
            return True
        if len(points) == 1:
            return False
        lons = [p[0] for p in points]
        lats = [p[1] for p in points]
        if max(lons) < self.west or min(lons) > self.east or max(lats) < self.south or min(lats) > self.north:
            return False
        return LineString(points).intersects(self.geometry())


@overload
def latlon(coord: tuple[float, float]) -> dict[str, float]: ...
@overload
def latlon(coord: tuple[float, float] | None) -> dict[str, float] | None: ...
def latlon(coord: tuple[float, float] | None) -> dict[str, float] | None:
    """Overpass's ``{"lat", "lon"}`` of a (lon, lat) point, rounded to the stored precision; None for None."""
    if coord is None:
        return None
    return {"lat": round(coord[1], PRECISION), "lon": round(coord[0], PRECISION)}


def bounds_of(coords: Iterable[tuple[float, float] | None]) -> dict[str, float] | None:
    """Overpass's ``bounds`` of the points (None when there are none)."""
    points = [c for c in coords if c is not None]
    if not points:
        return None
    lons = [p[0] for p in points]
    lats = [p[1] for p in points]
    return {"minlat": round(min(lats), PRECISION), "minlon": round(min(lons), PRECISION),
            "maxlat": round(max(lats), PRECISION), "maxlon": round(max(lons), PRECISION)}


def node_element(node_id: int, lon: float, lat: float, tags: dict[str, str]) -> dict[str, Any]:
    """A node in Overpass JSON form."""
    element: dict[str, Any] = {"type": "node", "id": node_id, "lat": round(lat, PRECISION),
                               "lon": round(lon, PRECISION)}
    if tags:
        element["tags"] = tags
    return element


def way_element(way_id: int, refs: list[int], coords: list[tuple[float, float] | None],
                tags: dict[str, str]) -> dict[str, Any]:
    """A way in Overpass JSON form, with its geometry (None for nodes without a location)."""
    element: dict[str, Any] = {"type": "way", "id": way_id}
    bounds = bounds_of(coords)
    if bounds:
        element["bounds"] = bounds
    element["nodes"] = refs
    element["geometry"] = [latlon(c) for c in coords]
    if tags:
        element["tags"] = tags
    return element


def empty_osm_data(cell: ArdCell, bbox: CellBox, provenance: dict[str, Any]) -> dict[str, Any]:
    """A cell's OSM document without elements."""
    return {"quadkey": cell.quadkey, "cell": cell.id,
            "bbox": [round(bbox.south, PRECISION), round(bbox.west, PRECISION),
                     round(bbox.north, PRECISION), round(bbox.east, PRECISION)],
            "provenance": provenance, "nodes": [], "ways": [], "relations": []}


def incomplete_geometry(data: dict[str, Any]) -> list[str]:
    """Problems: ways (and relation member ways) whose geometry lacks node positions."""
    ways = [w["id"] for w in data["ways"] if None in w.get("geometry", [])]
    members = {(r["id"], m["ref"]) for r in data["relations"] for m in r.get("members", [])
               if m["type"] == "way" and (None in m.get("geometry", [None]))}
    problems = []
    if ways:
        problems.append(f"{len(ways)} way(s) reference nodes missing from the extract (null vertices in "
                        f"their geometry), e.g. way {', '.join(map(str, ways[:5]))}")
    if members:
        relations = sorted({r for r, _ in members})
        problems.append(f"{len(relations)} relation(s) have member ways missing or incomplete in the extract, "
                        f"e.g. relation {', '.join(map(str, relations[:5]))}")
    return problems


def sort_elements(data: dict[str, Any]) -> dict[str, Any]:
    """Sort the document's elements by id (in place), so equal inputs give equal files; the document."""
    for kind in ("nodes", "ways", "relations"):
        data[kind].sort(key=lambda e: e["id"])
    return data


def tag_summary(data: dict[str, Any], top: int = 20) -> dict[str, Any]:
    """Per element kind: how many, and the most frequent ``key=value`` tags."""
    summary: dict[str, Any] = {}
    for kind in ("nodes", "ways", "relations"):
        counts: Counter[str] = Counter()
        for element in data.get(kind, []):
            for key, value in element.get("tags", {}).items():
                counts[f"{key}={value}"] += 1
        summary[kind] = {"count": len(data.get(kind, [])), "top_tags": counts.most_common(top)}
    return summary


def top_keys(data: dict[str, Any], top: int = 15) -> list[tuple[str, int]]:
    """The most frequent tag keys over all elements."""
    counts: Counter[str] = Counter()
    for kind in ("nodes", "ways", "relations"):
        for element in data.get(kind, []):
            counts.update(element.get("tags", {}).keys())
    return counts.most_common(top)


__all__ = ["CellBox", "DEFAULT_MARGIN_DEG", "OsmError", "empty_osm_data", "node_element",
           "sort_elements", "tag_summary", "top_keys", "way_element", "bounds_of", "latlon"]
