"""Labelling footprints: coverage measured exactly, thresholds applied, overlaps not double counted."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, Point, box

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.labels.labeller import dissolve, label_footprints
from imagesim_pipeline.labels.osm_geometry import LINE, POINT, POLYGON, OsmFeatures
from imagesim_pipeline.labels.vocabulary import Vocabulary, load_vocabulary

CELL = ArdCell.parse("Z35-013133103003")
A, B = ArdCell.parse(CELL.id + "00000"), ArdCell.parse(CELL.id + "00001")  # neighbours, B east of A


def features(*items) -> OsmFeatures:
    geoms = np.empty(len(items), dtype=object)
    geoms[:] = [g for g, _, _ in items]
    kinds = np.array([k for _, k, _ in items], dtype=np.int8)
    return OsmFeatures(geoms, kinds, [t for _, _, t in items], [f"way/{i}" for i in range(len(items))])


def chip_box(cell: ArdCell, fx0=0.0, fy0=0.0, fx1=1.0, fy1=1.0):
    x0, y0, x1, y1 = cell.bounds
    w, h = x1 - x0, y1 - y0
    return box(x0 + fx0 * w, y0 + fy0 * h, x0 + fx1 * w, y0 + fy1 * h)


def measure(vocab, items, cells=(A, B)):
    result = label_footprints(features(*items), vocab, list(cells))
    return result, {name: i for i, name in enumerate(vocab.names)}


def test_area_share_length_and_counts_are_exact():
    vocab = Vocabulary.from_config({"labels": [
        {"name": "forest", "tags": ["landuse=forest"], "geometry": ["polygon"], "min_area_share": 0.1},
        {"name": "road", "tags": ["highway"], "geometry": ["line"], "min_length_m": 20},
        {"name": "tree", "tags": ["natural=tree"], "geometry": ["point"], "min_count": 2}]})
    x0, y0, x1, y1 = A.bounds
    mid_y = (y0 + y1) / 2
    result, ix = measure(vocab, [
        (chip_box(A, 0, 0, 0.5, 1), POLYGON, {"landuse": "forest"}),  # the west half of A
        (LineString([(x1 - 25, mid_y), (x1 + 30, mid_y)]), LINE, {"highway": "residential"}),  # 25 m in A, 30 m in B
        (Point(x0 + 10, y0 + 10), POINT, {"natural": "tree"}),
        (Point(x0 + 20, y0 + 10), POINT, {"natural": "tree"}),
        (Point(x1 + 20, y0 + 10), POINT, {"natural": "tree"}),
    ])
    assert result.area_share[0, ix["forest"]] == pytest.approx(0.5, abs=1e-6)
    assert result.area_share[1, ix["forest"]] == 0
    assert result.length_m[:, ix["road"]] == pytest.approx([25, 30], abs=1e-4)
    assert result.count[:, ix["tree"]].tolist() == [2, 1]
    assert result.present.tolist() == [[True, True, True], [False, True, False]]
    assert result.label_ids(0) == [0, 1, 2] and result.label_ids(1) == [1]


def test_minimum_presence_is_a_threshold_on_the_measure():
    vocab = load_vocabulary()  # building: min_area_share 0.01, minor_road: min_length_m 20
    x0, y0, _, _ = A.bounds
    side = A.size
    small = box(x0, y0, x0 + 0.009 * side, y0 + side)  # 0.9 % of the chip
    big = box(x0 + 0.5 * side, y0, x0 + 0.511 * side, y0 + side)  # 1.1 %
    result, ix = measure(vocab, [(small, POLYGON, {"building": "yes"})], [A])
    assert not result.present[0, ix["building"]]
    result, ix = measure(vocab, [(small, POLYGON, {"building": "yes"}), (big, POLYGON, {"building": "yes"})], [A])
    assert result.present[0, ix["building"]] and result.area_share[0, ix["building"]] == pytest.approx(0.02, abs=1e-6)
    short = LineString([(x0 + 5, y0 + 5), (x0 + 15, y0 + 5)])
    result, ix = measure(vocab, [(short, LINE, {"highway": "service"})], [A])
    assert not result.present[0, ix["minor_road"]] and result.length_m[0, ix["minor_road"]] == pytest.approx(10)


def test_overlapping_polygons_of_one_label_count_once():
    vocab = load_vocabulary()
    west = chip_box(A, 0, 0, 0.6, 1)
    east = chip_box(A, 0.4, 0, 1, 1)  # overlaps `west` by 20 % of the chip
    result, ix = measure(vocab, [(west, POLYGON, {"landuse": "forest"}), (east, POLYGON, {"natural": "wood"}),
                                 (west, POLYGON, {"landuse": "forest"})], [A])
    assert result.area_share[0, ix["forest"]] == pytest.approx(1.0, abs=1e-6)
    far = ArdCell.parse(CELL.id + "00010")  # two chips east of A: does not touch it
    merged = dissolve(np.array([west, east, chip_box(far)], dtype=object))
    assert len(merged) == 2 and sum(shapely.area(merged)) == pytest.approx(2 * A.size**2)


def test_features_match_only_their_geometry_kinds():
    vocab = load_vocabulary()
    x0, y0, x1, _ = A.bounds
    # a building mapped as a node, and a road mapped as an area: not what the labels count
    result, ix = measure(vocab, [(Point(x0 + 5, y0 + 5), POINT, {"building": "yes"}),
                                 (chip_box(A), POLYGON, {"highway": "residential", "area": "yes"})], [A])
    assert not result.present.any() and result.count.sum() == 0


def test_no_features_or_no_footprints():
    vocab = load_vocabulary()
    empty = label_footprints(features(), vocab, [A, B])
    assert empty.present.shape == (2, 13) and not empty.present.any()
    none = label_footprints(features((chip_box(A), POLYGON, {"building": "yes"})), vocab, [])
    assert none.present.shape == (0, 13)
