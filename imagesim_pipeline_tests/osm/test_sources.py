"""OSM per cell from the real extracts, by both routes, and their failure modes."""

from __future__ import annotations

import json
import time

import pytest
import requests
from shapely.geometry import LineString, Point, box

from imagesim_pipeline.ard.grid import ArdCell, cells_covering
from imagesim_pipeline.osm import CellBox, OsmError, OverpassClient, extract_cells
from imagesim_pipeline.osm.pbf import cells_in_extract

HELSINKI_BOX = (24.9351762, 60.1641550, 24.9534145, 60.1791130)
TEST_BOX = (26.9299999, 60.5200000, 26.9699999, 60.5399999)


def extract_cells_of(samples, name, bounds):
    cells = cells_covering(box(*bounds), 4326, 12)
    return dict(extract_cells(samples[name], cells))


@pytest.fixture(scope="module")
def helsinki(samples):
    return extract_cells_of(samples, "Helsinki.osm.pbf", HELSINKI_BOX)


@pytest.fixture(scope="module")
def finland(samples):
    return extract_cells_of(samples, "test.osm.pbf", TEST_BOX)


def test_helsinki_cell_holds_the_city_centre(helsinki):
    (cell,) = helsinki
    assert cell.id == "Z35-013133103003"
    data = helsinki[cell]
    assert data["quadkey"] == "013133103003" and data["cell"] == cell.id
    assert len(data["nodes"]) > 5000 and len(data["ways"]) > 4000 and len(data["relations"]) > 300
    assert all(n.get("tags") for n in data["nodes"])  # untagged vertices are not listed
    assert data["provenance"]["source"] == "pbf" and data["provenance"]["extract"] == "Helsinki.osm.pbf"
    ways = [w for w in data["ways"] if w.get("tags", {}).get("building")]
    assert len(ways) > 400
    first = ways[0]
    assert len(first["nodes"]) == len(first["geometry"])
    assert {"lat", "lon"} <= set(next(g for g in first["geometry"] if g))
    multipolygons = [r for r in data["relations"] if r.get("tags", {}).get("type") == "multipolygon"]
    assert multipolygons and any("geometry" in m for m in multipolygons[0]["members"])


def test_ways_missing_nodes_are_reported_not_fatal(helsinki):
    (data,) = helsinki.values()
    problems = data["provenance"]["problems"]
    assert problems and "missing from the extract" in problems[0]
    assert any(g is None for w in data["ways"] for g in w["geometry"])


def test_selected_elements_meet_their_cell_box(finland):
    assert len(finland) >= 2, "the south-east Finland extract spans several cells"
    for cell, data in finland.items():
        b = CellBox.of(cell)
        area = b.geometry()
        for node in data["nodes"]:
            assert area.covers(Point(node["lon"], node["lat"]))
        for way in data["ways"]:
            points = [(g["lon"], g["lat"]) for g in way["geometry"] if g]
            geom = Point(points[0]) if len(points) == 1 else LineString(points)
            assert geom.distance(area) < 1e-7, (cell.id, way["id"])


def test_neighbouring_cells_share_only_crossing_features(finland):
    cells = sorted(finland)
    a, b = finland[cells[0]], finland[cells[1]]
    shared = {w["id"] for w in a["ways"]} & {w["id"] for w in b["ways"]}
    only_a = {w["id"] for w in a["ways"]} - shared
    assert only_a, "each cell has features of its own"


@pytest.mark.parametrize("name, bounds", [("Helsinki.osm.pbf", HELSINKI_BOX), ("test.osm.pbf", TEST_BOX)])
def test_pbf_and_overpass_routes_agree(samples, fake_overpass, name, bounds):
    client = OverpassClient(endpoint=fake_overpass[name], min_interval=0)
    for cell, from_pbf in extract_cells_of(samples, name, bounds).items():
        from_overpass = client.fetch_cell(cell)
        for kind in ("nodes", "ways", "relations"):
            assert from_overpass[kind] == from_pbf[kind], (cell.id, kind)
        assert from_overpass["provenance"]["snapshot"] == "2024-02-29T12:00:00Z"
        assert "[bbox:" in from_overpass["provenance"]["query"]


def test_cell_without_osm_is_valid_and_empty(samples):
    cell = ArdCell.parse("Z33-120020223133")
    ((got, data),) = list(extract_cells(samples["Helsinki.osm.pbf"], [cell]))
    assert got == cell and data["nodes"] == data["ways"] == data["relations"] == []
    assert json.loads(json.dumps(data)) == data


def test_one_pass_serves_cells_in_several_zones(samples):
    cells = [ArdCell.parse("Z35-013133103003"), ArdCell.parse("Z33-120020223133"), ArdCell.parse("Z34-013133103003")]
    out = dict(extract_cells(samples["Helsinki.osm.pbf"], cells))
    assert set(out) == set(cells)
    assert out[cells[0]]["ways"] and not out[cells[1]]["ways"]


def test_cells_in_extract_uses_the_header_box(samples):
    cells = [ArdCell.parse("Z35-013133103003"), ArdCell.parse("Z33-120020223133")]
    assert cells_in_extract(samples["Helsinki.osm.pbf"], cells) == cells[:1]


def test_missing_and_corrupt_extracts_are_named(tmp_path, samples):
    cell = ArdCell.parse("Z35-013133103003")
    with pytest.raises(OsmError, match="nowhere.osm.pbf: no such OSM extract"):
        list(extract_cells(tmp_path / "nowhere.osm.pbf", [cell]))
    broken = tmp_path / "broken.osm.pbf"
    data = samples["Helsinki.osm.pbf"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(OsmError, match="broken.osm.pbf: .*(corrupt|not a readable)"):
        list(extract_cells(broken, [cell]))


# --- Overpass failure modes ----------------------------------------------------------------
def script(url: str, behaviours: list[dict]) -> None:
    requests.post(f"{url}/_script", data=json.dumps(behaviours), timeout=5).raise_for_status()


def stats(url: str) -> int:
    return requests.get(f"{url}/_stats", timeout=5).json()["requests"]


@pytest.mark.parametrize("behaviour", [
    {"status": 504}, {"status": 502}, {"html": True}, {"truncate": True},
    {"remark": "runtime error: Query timed out in \"query\" at line 3 after 181 seconds."},
])
def test_overpass_retries_transient_failures(fake_overpass, behaviour):
    url = fake_overpass["Helsinki.osm.pbf"]
    waits = []
    client = OverpassClient(endpoint=url, min_interval=0, backoff=0.01, sleep=waits.append)
    script(url, [behaviour, behaviour])
    data = client.fetch_cell(ArdCell.parse("Z35-013133103003"))
    assert stats(url) == 3 and len(waits) == 2
    assert len(data["ways"]) > 4000


def test_overpass_honours_retry_after(fake_overpass):
    url = fake_overpass["Helsinki.osm.pbf"]
    waits = []
    client = OverpassClient(endpoint=url, min_interval=0, backoff=0.01, sleep=waits.append)
    script(url, [{"status": 429, "retry_after": "7"}])
    client.fetch_cell(ArdCell.parse("Z35-013133103003"))
    assert waits == [7.0]


def test_overpass_timeout_is_retried(fake_overpass):
    url = fake_overpass["test.osm.pbf"]
    client = OverpassClient(endpoint=url, min_interval=0, backoff=0.01, http_timeout=2, sleep=lambda s: None)
    script(url, [{"sleep": 6}])
    started = time.monotonic()
    data = client.fetch_cell(cells_covering(box(*TEST_BOX), 4326, 12)[0])
    assert data["ways"] and stats(url) == 2 and time.monotonic() - started < 6


def test_overpass_gives_up_with_a_clear_error(fake_overpass):
    url = fake_overpass["Helsinki.osm.pbf"]
    client = OverpassClient(endpoint=url, min_interval=0, retries=3, backoff=0.01, sleep=lambda s: None)
    script(url, [{"status": 504}] * 3)
    with pytest.raises(OsmError, match=r"Z35-013133103003: Overpass at .* failed after 3 tries \(last: HTTP 504\)"):
        client.fetch_cell(ArdCell.parse("Z35-013133103003"))


def test_unreachable_overpass_is_named(tmp_path):
    from imagesim_pipeline_tests.conftest import free_port

    client = OverpassClient(endpoint=f"http://127.0.0.1:{free_port()}/api/interpreter", min_interval=0, retries=2,
                            backoff=0.01, sleep=lambda s: None)
    with pytest.raises(OsmError, match="cannot connect"):
        client.fetch_cell(ArdCell.parse("Z35-013133103003"))


def test_polite_pacing_between_requests(fake_overpass):
    url = fake_overpass["test.osm.pbf"]
    waits = []
    client = OverpassClient(endpoint=url, min_interval=30, sleep=waits.append)
    cell = ArdCell.parse("Z35-013133103003")
    client.fetch_cell(cell)
    client.fetch_cell(cell)
    assert len(waits) == 1 and 25 < waits[0] <= 30


def test_query_can_pin_a_date():
    from imagesim_pipeline.osm import build_query

    query = build_query(CellBox.of(ArdCell.parse("Z35-013133103003")), 60, 1024, "2021-11-02T00:00:00Z")
    assert '[date:"2021-11-02T00:00:00Z"]' in query and "out geom;" in query


def test_spilling_to_disk_gives_the_same_documents(samples, finland, monkeypatch):
    """Memory stays bounded: with a tiny buffer everything goes through the disk spool."""
    import imagesim_pipeline.osm.pbf as pbf

    monkeypatch.setattr(pbf, "SPOOL_LIMIT", 25)
    spilled = extract_cells_of(samples, "test.osm.pbf", TEST_BOX)
    for cell, data in finland.items():
        for kind in ("nodes", "ways", "relations"):
            assert spilled[cell][kind] == data[kind]


@pytest.mark.parametrize("index", ["sparse_file_array"])
def test_on_disk_node_index_gives_the_same_documents(samples, finland, index):
    cells = list(finland)
    on_disk = dict(extract_cells(samples["test.osm.pbf"], cells, node_index=index))
    assert all(on_disk[c]["ways"] == finland[c]["ways"] for c in cells)


def test_fetch_osm_by_quadkey_summarises_stored_documents(helsinki, tmp_path):
    from imagesim_pipeline.osm import fetch_osm_by_quadkey, write_osm_data
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(tmp_path)
    ((cell, data),) = helsinki.items()
    write_osm_data(bucket, cell, data)
    summary = fetch_osm_by_quadkey(35, str(tmp_path))
    assert list(summary) == [cell.id]
    assert summary[cell.id]["ways"]["count"] == len(data["ways"])
    top = dict(summary[cell.id]["ways"]["top_tags"])
    assert top["highway=footway"] > 100
    assert fetch_osm_by_quadkey(35, str(tmp_path), quadkey="000000000000") == {}


def test_cell_beyond_the_extract_is_flagged(samples):
    ((_, data),) = list(extract_cells(samples["Helsinki.osm.pbf"], [ArdCell.parse("Z17-120222301130")]))
    assert data["ways"] == [] and "not wholly inside the bounding box of Helsinki.osm.pbf" in data["provenance"]["problems"][0]


def test_junk_extract_is_named_everywhere(tmp_path):
    junk = tmp_path / "junk.osm.pbf"
    junk.write_bytes(b"\x00\x01 definitely not a pbf" * 100)
    cell = ArdCell.parse("Z35-013133103003")
    with pytest.raises(OsmError, match="junk.osm.pbf: not a readable OSM extract"):
        cells_in_extract(junk, [cell])
    with pytest.raises(OsmError, match="junk.osm.pbf: not a readable OSM extract"):
        list(extract_cells(junk, [cell]))
