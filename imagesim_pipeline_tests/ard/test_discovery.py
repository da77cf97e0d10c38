"""Discovery of cells and acquisitions from a bucket listing, malformed entries included."""

from __future__ import annotations

from datetime import datetime, timezone

from imagesim_pipeline.ard.discovery import discover, discover_bucket
from imagesim_pipeline.storage import ObjectInfo, open_bucket

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def listing(*keys: str) -> list[ObjectInfo]:
    return [ObjectInfo(k, 100, T0) for k in keys]


def test_groups_cells_and_acquisitions():
    found = discover(listing(
        "ard/33/120020223133/2020-01-01/A1-visual.tif",
        "ard/33/120020223133/2020-01-01/A1-data-mask.gpkg",
        "ard/33/120020223133/2020-01-01/A1.json",
        "ard/33/120020223133/2021-06-30/B2-visual.tif",
        "ard/33/120020223133/2021-06-30/B2-cloud-mask.gpkg",
        "ard/33/120020223133/osm_data.json",
        "ard/05/300000000001/2020-01-01/C3-visual.tif",
        "chips/33/whatever.jpg",
    ))
    assert found.problems == []
    assert found.cell_ids == ["Z05-300000000001", "Z33-120020223133"]
    cell = found.cells["Z33-120020223133"]
    assert cell.dates == ["2020-01-01", "2021-06-30"]
    first = cell.acquisitions[0]
    assert (first.catalog_id, sorted(first.assets)) == ("A1", ["data-mask", "stac", "visual"])
    assert cell.extra_files == ["ard/33/120020223133/osm_data.json"]
    assert cell.bytes == 500
    assert found.cells["Z05-300000000001"].cell.epsg == 32705


def test_malformed_entries_are_reported_and_the_scan_goes_on():
    found = discover(listing(
        "ard/99/120020223133/2020-01-01/A-visual.tif",      # bad zone
        "ard/33/12002022313/2020-01-01/A-visual.tif",       # 11-digit quadkey
        "ard/33/120020223139/2020-01-01/A-visual.tif",      # digit 9
        "ard/33/120020223133/2020-13-01/A-visual.tif",      # month 13
        "ard/33/120020223133/20200101/A-visual.tif",        # not YYYY-MM-DD
        "ard/33/120020223133/2020-01-01/A-thumb.png",       # unknown asset
        "ard/33/120020223133/2020-01-01/B-data-mask.gpkg",  # no visual for B
        "ard/33/120020223133/2020-01-01/sub/A-visual.tif",  # too deep
        "ard/33/120020223133/readme.txt",                   # stray file
        "ard/5/300000000001/2020-01-01/A-visual.tif",       # zone folder not zero-padded
        "ard/33/120020223133/2020-01-01/C-visual.tif",      # the one good entry
    ))
    assert found.cell_ids == ["Z33-120020223133"]
    assert [a.catalog_id for a in found.cells["Z33-120020223133"].acquisitions] == ["C"]
    reasons = {p.key: p.reason for p in found.problems}
    assert len(reasons) == 10
    assert "should be written 05" in reasons["ard/5/300000000001/2020-01-01/A-visual.tif"]
    assert "outside 1..60" in reasons["ard/99/120020223133/2020-01-01/A-visual.tif"]
    assert "11 digits" in reasons["ard/33/12002022313/2020-01-01/A-visual.tif"]
    assert "not a calendar date" in reasons["ard/33/120020223133/2020-13-01/A-visual.tif"]
    assert "not YYYY-MM-DD" in reasons["ard/33/120020223133/20200101/A-visual.tif"]
    assert "unknown asset" in reasons["ard/33/120020223133/2020-01-01/A-thumb.png"]
    assert "no visual asset" in reasons["ard/33/120020223133/2020-01-01/B-visual.tif"]


def test_cell_with_only_pipeline_outputs_is_not_a_delivery():
    assert discover(listing("ard/33/120020223133/osm_data.json")).cells == {}


def test_fingerprint_changes_with_the_delivery():
    base = ["ard/33/120020223133/2020-01-01/A-visual.tif"]
    one = discover(listing(*base)).cells["Z33-120020223133"].fingerprint()
    same = discover(listing(*base)).cells["Z33-120020223133"].fingerprint()
    more = discover(listing(*base, "ard/33/120020223133/2021-01-01/B-visual.tif")).cells["Z33-120020223133"]
    assert one == same != more.fingerprint()


def test_discovers_the_ingested_real_imagery(ingested_bucket):
    found = discover_bucket(open_bucket(ingested_bucket))
    assert found.problems == []
    zones = {c[:3] for c in found.cell_ids}
    assert zones == {"Z31", "Z16", "Z17"}  # Netherlands, Texas/Gulf coast, Bahamas
    assert all(len(d.acquisitions) == 1 for d in found.cells.values())
    assert all(set(a.assets) == {"visual", "data-mask", "stac"} for d in found.cells.values() for a in d.acquisitions)


def test_empty_bucket_has_no_cells(tmp_path):
    found = discover_bucket(open_bucket(tmp_path))
    assert found.cells == {} and found.problems == []
