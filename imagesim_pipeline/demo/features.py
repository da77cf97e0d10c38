"""Map features of an OSM extract, by what they look like from above.

The classes are the ones a renderer draws (and a classifier can learn): water, buildings,
roads by class, railways, parking, forest, grass and parks, farmland, bare ground.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

# Road classes and their drawn width in metres.
ROAD_WIDTHS = {"major_road": 14.0, "minor_road": 7.0, "path": 2.5}
RAIL_WIDTH = 4.0
WATERWAY_WIDTH = 6.0
MAJOR = {"motorway", "trunk", "primary", "secondary", "motorway_link", "trunk_link", "primary_link"}
MINOR = {"tertiary", "residential", "unclassified", "service", "living_street", "secondary_link", "tertiary_link",
         "road"}
PATHS = {"footway", "path", "cycleway", "pedestrian", "steps", "track", "bridleway"}


def area_class(tags) -> str | None:
    """The drawn class of a closed area, from its tags (None: not drawn)."""
    get = tags.get
    if get("building"):
        return "building"
    if get("natural") == "water" or get("waterway") in ("riverbank", "dock") or get("landuse") in ("reservoir", "basin"):
        return "water"
    if get("amenity") == "parking" or get("parking") == "surface":
        return "parking"
    if get("landuse") == "forest" or get("natural") in ("wood", "scrub"):
        return "forest"
    if get("leisure") in ("park", "garden", "pitch", "playground") or get("landuse") in (
            "grass", "meadow", "recreation_ground", "village_green", "cemetery") or get("natural") == "grassland":
        return "grass"
    if get("landuse") in ("farmland", "farmyard", "orchard", "allotments"):
        return "farmland"
    if get("natural") in ("sand", "bare_rock", "beach", "scree") or get("landuse") in (
            "construction", "brownfield", "quarry", "railway"):
        return "bare"
    return None


def line_class(tags) -> str | None:
    highway = tags.get("highway")
    if highway in MAJOR:
        return "major_road"
    if highway in MINOR:
        return "minor_road"
    if highway in PATHS:
        return "path"
    if tags.get("railway") in ("rail", "tram", "light_rail", "subway", "narrow_gauge"):
        return "railway"
    if tags.get("waterway") in ("river", "canal", "stream"):
        return "waterway"
    return None


def load_features(pbf: str | Path) -> dict[str, list[BaseGeometry]]:
    """Drawable features of the extract in WGS84, by class (areas as polygons, lines as lines)."""
    import osmium

    wkb = osmium.geom.WKBFactory()
    out: dict[str, list[BaseGeometry]] = defaultdict(list)
    for obj in osmium.FileProcessor(str(pbf)).with_areas().with_locations():
        try:
            if obj.is_area():
                cls = area_class(obj.tags)
                if cls:
                    out[cls].append(shapely.from_wkb(wkb.create_multipolygon(obj)))
            elif obj.is_way():
                cls = line_class(obj.tags)
                if cls and len(obj.nodes) >= 2:
                    out[cls].append(shapely.from_wkb(wkb.create_linestring(obj)))
        except (RuntimeError, osmium.InvalidLocationError):
            continue  # a way with nodes missing from the extract, or an unclosed ring: not drawable
    return dict(out)
