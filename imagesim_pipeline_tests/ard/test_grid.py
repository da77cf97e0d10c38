"""The ARD grid against PyPI's maxar-ard-grid as an oracle, plus parsing and covering."""

from __future__ import annotations

import random

import numpy as np
import pytest
from maxar_ard_grid import Cell as OracleCell
from maxar_ard_grid import covers as oracle_covers
from pyproj import Transformer
from shapely.geometry import Point, box
from shapely.ops import transform as shapely_transform

from imagesim_pipeline.ard.grid import ArdCell, GridError, cell_size, cells_covering


def random_cells(n: int, seed: int = 12) -> list[ArdCell]:
    """Random cells at zooms 12-18 in every zone, both hemispheres, with a share at zone edges."""
    rng = random.Random(seed)
    cells = []
    for i in range(n):
        zoom = rng.randint(12, 18)
        zone = rng.randint(1, 60)
        n_tiles = 2**zoom
        # Keep to the part of the grid that holds real places (|lat| < 84): the central band.
        size = cell_size(zoom)
        x_span = int(700_000 / size)  # +-700 km around the central meridian reaches past the zone edges
        y_span = int(9_300_000 / size)
        x = n_tiles // 2 + rng.randint(-x_span, x_span - 1)
        if i % 5 == 0:  # zone edges: ~3 degrees from the central meridian (~300-330 km at low latitudes)
            x = n_tiles // 2 + rng.choice([-1, 1]) * int(rng.uniform(250_000, 340_000) / size)
        y = n_tiles // 2 + rng.randint(-y_span, y_span - 1)
        cells.append(ArdCell.from_tile(zone, x, y, zoom))
    return cells


CELLS = random_cells(10_000)


def test_sample_spans_zooms_hemispheres_and_zones():
    assert {c.zoom for c in CELLS} == set(range(12, 19))
    assert {c.is_south for c in CELLS} == {True, False}
    assert len({c.zone for c in CELLS}) == 60


def test_ids_paths_bounds_and_epsg_agree_with_oracle():
    for cell in CELLS:
        oracle = OracleCell(cell.id)
        assert oracle.quadkey == cell.quadkey and oracle.zone == cell.zone
        assert oracle.id == cell.id
        assert OracleCell(cell.path).id == cell.id
        assert oracle.proj == f"EPSG:{cell.epsg}"
        assert np.allclose(oracle.bounds, cell.bounds, rtol=0, atol=1e-6), cell.id
        assert np.allclose(oracle.grid_bounds, cell.grid_bounds, rtol=0, atol=1e-6), cell.id
        assert (oracle.x, oracle.y) == cell.tile
        assert ArdCell.parse(cell.id) == cell == ArdCell.parse(cell.path)


def test_wgs84_geometry_agrees_with_oracle():
    for cell in CELLS[:2000]:
        ours = cell.wgs84_geometry
        theirs = OracleCell(cell.id).geom_WGS84
        # The oracle joins the four corners with straight lines in degrees; ours follows the curved
        # edges (densified). The corners must agree exactly, the outlines up to that bow.
        corners = {tuple(np.round(c, 9)) for c in theirs.exterior.coords}
        assert corners <= {tuple(np.round(c, 9)) for c in ours.exterior.coords}, cell.id
        if theirs.bounds[2] - theirs.bounds[0] < 180:  # not split by the antimeridian
            assert ours.symmetric_difference(theirs).area < 5e-3 * theirs.area, cell.id


def test_parent_and_children_agree_with_oracle():
    for cell in CELLS[:3000]:
        oracle = OracleCell(cell.id)
        assert cell.parent.id == oracle.parent.id
        assert cell.ancestor(12).id == oracle.get_parent_at_zoom(12).id
        assert [c.id for c in cell.children()] == [c.id for c in oracle.children]
    for cell in CELLS[:200]:
        oracle = OracleCell(cell.id)
        ours = {c.id for c in cell.children(cell.zoom + 2)}
        assert ours == {c.id for c in oracle.get_children_at_zoom(cell.zoom + 2)}
        assert all(cell.contains(ArdCell.parse(c)) for c in ours)


def test_children_tile_their_parent_exactly():
    cell = ArdCell.parse("Z33-120020223133")
    kids = cell.children(17)
    assert len(kids) == 4**5
    assert sum(k.geometry.area for k in kids) == pytest.approx(cell.geometry.area)
    assert box(*cell.bounds).equals(box(*np.array([k.bounds for k in kids]).min(axis=0)[:2],
                                        *np.array([k.bounds for k in kids]).max(axis=0)[2:]))
    assert kids[0].size == 156.25


@pytest.mark.parametrize("text, reason", [
    ("Z61-120020223133", "outside 1..60"),
    ("Z00-120020223133", "outside 1..60"),
    ("Z33-120020223134", "not an ARD cell id"),
    ("Z33-", "not an ARD cell id"),
    ("33_120020223133", "not an ARD cell id"),
    ("Z33-" + "0" * 30, "quadkey"),
])
def test_bad_ids_are_rejected_with_the_reason(text, reason):
    with pytest.raises(GridError, match=reason) as info:
        ArdCell.parse(text)
    assert text.strip()[:10] in str(info.value) or reason == "quadkey"


def test_southern_cells_use_327_and_false_northing():
    cell = ArdCell.parse("Z33-300000000000")
    assert cell.epsg == 32733
    assert cell.grid_bounds[3] <= 0 < cell.bounds[3]
    assert cell.bounds[3] - cell.grid_bounds[3] == 10_000_000


def _random_polygons(n: int, seed: int = 5):
    rng = random.Random(seed)
    for i in range(n):
        lat = rng.uniform(-70, 70)
        if i % 3 == 0:  # straddle a zone edge
            lon = -180 + 6 * rng.randint(1, 59) + rng.uniform(-0.05, 0.05)
        else:
            lon = rng.uniform(-179, 179)
        radius = rng.uniform(0.005, 0.06)
        yield Point(lon, lat).buffer(radius, 8)


@pytest.mark.parametrize("zoom", [12, 13])
def test_covering_agrees_with_oracle(zoom):
    for geom in _random_polygons(60, seed=zoom):
        ours = {c.id for c in cells_covering(geom, 4326, zoom)}
        theirs = {c.id for c in oracle_covers(geom, zoom=zoom)}
        assert ours == theirs, geom.centroid


def test_covering_is_the_same_in_any_crs():
    # A box in the Dutch national grid (the deepforest sample's CRS) and the same box in WGS84.
    rd = box(127_375, 428_000, 127_625 + 6_000, 428_250 + 4_000)
    to_wgs84 = Transformer.from_crs(28992, 4326, always_xy=True).transform
    wgs84 = shapely_transform(to_wgs84, rd.segmentize(50))
    assert cells_covering(rd, "EPSG:28992", 12) == cells_covering(wgs84, 4326, 12)
    assert all(c.zone == 31 for c in cells_covering(rd, "EPSG:28992", 12))


def test_cell_covering_itself_at_finer_zoom_is_its_children():
    cell = ArdCell.parse("Z16-120200121330")
    covering = cells_covering(cell.geometry, cell.epsg, 14)
    assert covering == cell.children(14)
