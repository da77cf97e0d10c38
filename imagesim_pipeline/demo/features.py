"""Map features of an OSM extract, by what they look like from above.

The classes are the ones a renderer draws (and a classifier can learn): water, buildings,
roads by class, railways and tram tracks, waterways and ditches, parking, forest, grass and
parks, farmland, bare ground, residential yards and industrial or commercial ground. The tag
rules follow the default label vocabulary, so a label derived from OSM is drawn in the pixels.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

# Road classes and their drawn width in metres.
ROAD_WIDTHS = {"major_road": 14.0, "minor_road": 7.0, "path": 2.5}
RAIL_WIDTH = 4.0
TRAM_WIDTH = 3.0
WATERWAY_WIDTH = 6.0
DITCH_WIDTH = 2.0
MAJOR = {"motorway", "trunk", "primary", "secondary", "motorway_link", "trunk_link", "primary_link"}
MINOR = {"tertiary", "residential", "unclassified", "service", "living_street", "secondary_link", "tertiary_link",
         "road"}
PATHS = {"footway", "path", "cycleway", "pedestrian", "steps", "track", "bridleway"}
HIDDEN = {"tunnel": {"yes", "building_passage", "culvert"}, "location": {"underground"}}


def area_class(tags) -> str | None:
    """The drawn class of a closed area, from its tags (None: not drawn)."""
    get = tags.get
    if get("building"):
        return "building"
    if (get("natural") == "water" or get("waterway") in ("riverbank", "dock")
            or get("landuse") in ("reservoir", "basin")):
        return "water"
    if get("amenity") == "parking" or get("parking") == "surface":
        return None if get("parking") in ("underground", "multi-storey", "rooftop") else "parking"
    if get("landuse") == "forest" or get("natural") in ("wood", "scrub"):
        return "forest"
    if get("leisure") in ("park", "garden", "pitch", "playground", "golf_course") or get("landuse") in (
            "grass", "meadow", "recreation_ground", "village_green", "cemetery") or get("natural") in (
            "grassland", "heath"):
        return "grass"
    if get("landuse") in ("farmland", "farmyard", "orchard", "allotments", "vineyard", "greenhouse_horticulture"):
        return "farmland"
    if get("natural") in ("sand", "bare_rock", "beach", "scree", "shingle") or get("landuse") in (
            "construction", "brownfield", "quarry", "landfill", "railway"):
        return "bare"
    if get("landuse") == "residential":
        return "residential"
    if get("landuse") in ("industrial", "commercial", "retail", "port"):
        return "industrial"
    return None


def line_class(tags) -> str | None:
    """The drawn class of a way drawn as a line (None: not drawn, e.g. in a tunnel)."""
    if any(tags.get(key) in values for key, values in HIDDEN.items()):
        return None
    highway = tags.get("highway")
    if highway in MAJOR:
        return "major_road"
    if highway in MINOR:
        return "minor_road"
    if highway in PATHS:
        return "path"
    railway = tags.get("railway")
    if railway == "tram":
        return "tram"
    if railway in ("rail", "light_rail", "subway", "narrow_gauge"):
        return "railway"
    waterway = tags.get("waterway")
    if waterway in ("river", "canal", "stream"):
        return "waterway"
    if waterway in ("ditch", "drain"):
        return "ditch"
    return None


def building_height(tags) -> float:
    """A building's height in metres from ``height`` or ``building:levels`` (NaN when neither says)."""
    for key, scale, offset in (("height", 1.0, 0.0), ("building:levels", 3.0, 1.0)):
        value = tags.get(key)
        if value:
            try:
                number = float(value.split()[0].replace(",", "."))
            except ValueError:
                continue
            if 0 < number < 1000:
                return number * scale + offset
    return math.nan


@dataclass
class Layers:
    """Drawable features by class; per building (``geoms["building"][i]``) its OSM id (``w123``
    for a way, ``r45`` for a multipolygon relation) and its tagged height (NaN if untagged)."""

    geoms: dict[str, list[BaseGeometry]] = field(default_factory=dict)
    building_ids: list[str] = field(default_factory=list)
    building_heights: list[float] = field(default_factory=list)


def load_layers(pbf: str | Path) -> Layers:
    """Drawable features of the extract in WGS84 (areas as polygons, lines as lines), with building ids."""
    import osmium

    wkb = osmium.geom.WKBFactory()
    out: dict[str, list[BaseGeometry]] = defaultdict(list)
    building_ids: list[str] = []
    heights: list[float] = []
    for obj in osmium.FileProcessor(str(pbf)).with_areas().with_locations():
        try:
            if isinstance(obj, osmium.osm.Area):
                cls = area_class(obj.tags)
                if cls:
                    out[cls].append(shapely.from_wkb(wkb.create_multipolygon(obj)))
                    if cls == "building":
                        building_ids.append(f"{'w' if obj.from_way() else 'r'}{obj.orig_id()}")
                        heights.append(building_height(obj.tags))
            elif isinstance(obj, osmium.osm.Way):
                cls = line_class(obj.tags)
                if cls and len(obj.nodes) >= 2:
                    out[cls].append(shapely.from_wkb(wkb.create_linestring(obj)))
        except (RuntimeError, osmium.InvalidLocationError):
            continue  # a way with nodes missing from the extract, or an unclosed ring: not drawable
    return Layers(dict(out), building_ids, heights)


def load_features(pbf: str | Path) -> dict[str, list[BaseGeometry]]:
    """Drawable features of the extract in WGS84, by class (areas as polygons, lines as lines)."""
    return load_layers(pbf).geoms
