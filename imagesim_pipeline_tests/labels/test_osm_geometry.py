"""OSM elements to UTM geometries: kinds, reprojection, repair, and broken input reported."""

from __future__ import annotations

import pytest
import shapely
from pyproj import Transformer

from imagesim_pipeline.labels.osm_geometry import (
    LINE,
    POINT,
    POLYGON,
    is_area,
    osm_features,
)

EPSG = 32635
TO_LONLAT = Transformer.from_crs(EPSG, 4326, always_xy=True)
X0, Y0 = 385_000.0, 6_671_000.0  # central Helsinki in UTM 35N


def ll(x: float, y: float) -> dict[str, float]:
    lon, lat = TO_LONLAT.transform(X0 + x, Y0 + y)
    return {"lat": lat, "lon": lon}


def ring(x0, y0, x1, y1):
    return [ll(x0, y0), ll(x1, y0), ll(x1, y1), ll(x0, y1), ll(x0, y0)]


def way(way_id, geometry, **tags):
    closed = geometry[0] is not None and geometry[0] == geometry[-1]
    nodes = list(range(len(geometry) - 1)) + [0] if closed else list(range(len(geometry)))
    return {"type": "way", "id": way_id, "nodes": nodes, "geometry": geometry, "tags": tags}


def doc(nodes=(), ways=(), relations=()):
    return {"nodes": list(nodes), "ways": list(ways), "relations": list(relations)}


def test_kinds_follow_osm_area_conventions():
    data = doc(
        nodes=[{"type": "node", "id": 1, **ll(5, 5), "tags": {"amenity": "bench"}},
               {"type": "node", "id": 2, **ll(6, 6)}],  # untagged: a vertex, not a feature
        ways=[way(10, ring(0, 0, 20, 10), building="yes"),
              way(11, ring(30, 0, 40, 10), highway="residential"),  # a closed road is a line (roundabout)
              way(12, ring(50, 0, 60, 10), highway="pedestrian", area="yes"),
              way(13, [ll(0, 20), ll(100, 20)], highway="primary")])
    features = osm_features(data, EPSG)
    kinds = dict(zip(features.ids, features.kinds.tolist(), strict=True))
    assert kinds == {"node/1": POINT, "way/10": POLYGON, "way/11": LINE, "way/12": POLYGON, "way/13": LINE}
    geoms = dict(zip(features.ids, features.geometries, strict=True))
    assert geoms["way/10"].area == pytest.approx(200, rel=1e-6)  # exact metres after reprojection
    assert geoms["way/13"].length == pytest.approx(100, rel=1e-6)
    assert geoms["node/1"].x == pytest.approx(X0 + 5, abs=1e-6)
    assert features.problems == []


@pytest.mark.parametrize("tags, area", [({"natural": "coastline"}, False), ({"natural": "wood"}, True),
                                        ({"waterway": "riverbank"}, True), ({"waterway": "river"}, False),
                                        ({"landuse": "forest", "area": "no"}, False), ({"barrier": "fence"}, False)])
def test_is_area(tags, area):
    assert is_area(tags) is area


def test_missing_vertices_split_lines_and_skip_areas_with_a_named_problem():
    road = [ll(0, 0), ll(50, 0), None, ll(70, 0), ll(120, 0)]
    building = ring(0, 0, 10, 10)
    building[2] = None
    features = osm_features(doc(ways=[way(20, road, highway="service"), way(21, building, building="yes")]), EPSG)
    assert features.ids == ["way/20"]
    split = features.geometries[0]
    assert split.geom_type == "MultiLineString" and split.length == pytest.approx(100, rel=1e-6)
    assert features.problems == ["1 area way(s) skipped: vertices missing from the extract (e.g. way/21)"]


def test_self_intersecting_polygons_are_repaired_and_reported():
    bowtie = [ll(0, 0), ll(10, 10), ll(10, 0), ll(0, 10), ll(0, 0)]
    features = osm_features(doc(ways=[way(30, bowtie, landuse="forest")]), EPSG)
    geom = features.geometries[0]
    assert geom.is_valid and geom.area == pytest.approx(50, rel=1e-6)  # two triangles of 25 m²
    assert features.repaired == 1 and "way/30" in features.problems[0]


def member(geometry, role):
    return {"type": "way", "ref": 1, "role": role, "geometry": geometry}


def test_multipolygons_are_assembled_from_split_rings_with_holes():
    outer_a = [ll(0, 0), ll(100, 0), ll(100, 100)]
    outer_b = [ll(100, 100), ll(0, 100), ll(0, 0)]  # the outer ring in two member ways
    hole = ring(40, 40, 60, 60)
    rel = {"type": "relation", "id": 40, "tags": {"type": "multipolygon", "natural": "water"},
           "members": [member(outer_a, "outer"), member(outer_b, "outer"), member(hole, "inner")]}
    features = osm_features(doc(relations=[rel]), EPSG)
    assert features.ids == ["relation/40"] and features.kinds[0] == POLYGON
    assert features.tags[0] == {"natural": "water"}
    assert features.geometries[0].area == pytest.approx(100 * 100 - 20 * 20, rel=1e-6)
    assert features.problems == []


def test_relations_with_missing_members_keep_their_closed_rings():
    rel = {"type": "relation", "id": 41, "tags": {"type": "multipolygon", "landuse": "forest"},
           "members": [member(ring(0, 0, 10, 10), "outer"), {"type": "way", "ref": 9, "role": "outer"},
                       member([ll(20, 0), ll(30, 0)], "outer")]}  # one missing, one open
    features = osm_features(doc(relations=[rel]), EPSG)
    assert features.geometries[0].area == pytest.approx(100, rel=1e-6)
    assert "relation/41" in features.problems[0]
    broken = {"type": "relation", "id": 42, "tags": {"type": "multipolygon", "landuse": "forest"},
              "members": [{"type": "way", "ref": 9, "role": "outer"}]}
    features = osm_features(doc(relations=[broken]), EPSG)
    assert len(features) == 0 and "relation/42" in features.problems[0]


def test_an_empty_document_has_no_features():
    features = osm_features({"quadkey": "x", "nodes": [], "ways": [], "relations": []}, EPSG)
    assert len(features) == 0 and features.kind_counts() == {"polygon": 0, "line": 0, "point": 0}
    assert shapely.is_empty(features.geometries).all()


def test_islands_in_holes_belong_to_the_area_and_orphan_inner_rings_add_nothing():
    rel = {"type": "relation", "id": 43, "tags": {"type": "multipolygon", "landuse": "forest"},
           "members": [member(ring(0, 0, 100, 100), "outer"), member(ring(20, 20, 80, 80), "inner"),
                       member(ring(40, 40, 60, 60), "outer")]}  # forest, a clearing, woods in the clearing
    features = osm_features(doc(relations=[rel]), EPSG)
    assert features.geometries[0].area == pytest.approx(100 * 100 - 60 * 60 + 20 * 20, rel=1e-6)
    assert features.problems == []
    orphan = {"type": "relation", "id": 44, "tags": {"type": "multipolygon", "landuse": "forest"},
              "members": [{"type": "way", "ref": 9, "role": "outer"}, member(ring(20, 20, 80, 80), "inner")]}
    features = osm_features(doc(relations=[orphan]), EPSG)
    assert len(features) == 0 and "relation/44" in features.problems[0]  # the clearing is not forest
