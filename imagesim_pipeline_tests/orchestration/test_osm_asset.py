"""osm_data materialized through Dagster, from the real extracts and from an Overpass-compatible server."""

from __future__ import annotations

import json

import pytest
import requests
from dagster import AssetKey, DagsterInstance, materialize
from shapely.geometry import box

from imagesim_pipeline.ard.grid import ArdCell, cells_covering
from imagesim_pipeline.orchestration.osm_assets import OsmSourceResource, osm_data
from imagesim_pipeline.orchestration.partitions import ard_cells
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline.osm import osm_key
from imagesim_pipeline.storage import open_bucket

TEST_BOX = (26.9299999, 60.5200000, 26.9699999, 60.5399999)
HELSINKI = ArdCell.parse("Z35-013133103003")


def run(instance, cell_id: str, bucket_root, osm: OsmSourceResource):
    return materialize([osm_data], partition_key=cell_id, instance=instance, raise_on_error=False,
                       resources={"bucket": BucketResource(uri=str(bucket_root)), "osm": osm})


def latest_metadata(instance, cell_id: str) -> dict:
    records = instance.fetch_materializations(AssetKey("osm_data"), limit=100).records
    return next(r.asset_materialization.metadata for r in records if r.partition_key == cell_id)


@pytest.mark.e2e
def test_one_extract_read_serves_every_cell(samples, tmp_path, dagster_home):
    instance = DagsterInstance.get()
    cells = [c.id for c in cells_covering(box(*TEST_BOX), 4326, 12)]
    assert len(cells) >= 2
    instance.add_dynamic_partitions(ard_cells.name, cells + ["Z33-120020223133"])  # one cell far away
    osm = OsmSourceResource(source="pbf", pbf=str(samples["test.osm.pbf"]))
    first = run(instance, cells[0], tmp_path, osm)
    assert first.success
    meta = latest_metadata(instance, cells[0])
    assert meta["pbf_cache_hit"].value is False
    assert meta["cells_extracted_in_this_run"].value == len(cells)  # the far cell is outside the extract
    for cell_id in cells[1:]:
        assert run(instance, cell_id, tmp_path, osm).success
        assert latest_metadata(instance, cell_id)["pbf_cache_hit"].value is True
    bucket = open_bucket(tmp_path)
    for cell_id in cells:
        data = json.loads(bucket.read_bytes(osm_key(ArdCell.parse(cell_id))))
        assert data["cell"] == cell_id and data["ways"]
        assert latest_metadata(instance, cell_id)["ways"].value == len(data["ways"])
    # The far-away cell is a valid, empty document: no OSM there is not an error.
    assert run(instance, "Z33-120020223133", tmp_path, osm).success
    far = json.loads(bucket.read_bytes("ard/33/120020223133/osm_data.json"))
    assert far["nodes"] == far["ways"] == far["relations"] == []
    # ...and it says that no configured extract covers it (not that it sticks out of test.osm.pbf's box)
    assert far["provenance"]["problems"] == [
        next(p for p in far["provenance"]["problems"] if p.startswith("no configured OSM extract covers Z33-120020223133"))]


@pytest.mark.e2e
def test_overpass_route_through_dagster_matches_the_pbf(samples, fake_overpass, tmp_path, dagster_home):
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, [HELSINKI.id])
    via_pbf = tmp_path / "pbf"
    via_overpass = tmp_path / "overpass"
    assert run(instance, HELSINKI.id, via_pbf, OsmSourceResource(source="pbf", pbf=str(samples["Helsinki.osm.pbf"]))).success
    overpass = OsmSourceResource(source="overpass", overpass_url=fake_overpass["Helsinki.osm.pbf"], min_interval=0)
    assert run(instance, HELSINKI.id, via_overpass, overpass).success
    a = json.loads(open_bucket(via_pbf).read_bytes(osm_key(HELSINKI)))
    b = json.loads(open_bucket(via_overpass).read_bytes(osm_key(HELSINKI)))
    assert a["ways"] == b["ways"] and a["nodes"] == b["nodes"] and a["relations"] == b["relations"]
    meta = latest_metadata(instance, HELSINKI.id)
    assert meta["source"].value == "overpass" and "out geom" in meta["query"].value
    assert "| highway |" in meta["top_tag_keys"].value


@pytest.mark.e2e
def test_failing_overpass_leaves_no_partial_document(fake_overpass, tmp_path, dagster_home):
    """A refused query fails the step at once (not retried: it would be refused again), writing nothing."""
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, [HELSINKI.id])
    url = fake_overpass["Helsinki.osm.pbf"]
    requests.post(f"{url}/_script", data=json.dumps([{"status": 400}]), timeout=5).raise_for_status()
    overpass = OsmSourceResource(source="overpass", overpass_url=url, min_interval=0, retries=2)
    result = run(instance, HELSINKI.id, tmp_path / "bucket", overpass)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "refused the query: HTTP 400" in failure.step_failure_data.user_failure_data.description
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert list(open_bucket(tmp_path / "bucket").list()) == []



@pytest.mark.e2e
def test_missing_extract_fails_with_what_to_do(tmp_path, dagster_home):
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, [HELSINKI.id])
    result = run(instance, HELSINKI.id, tmp_path, OsmSourceResource(source="pbf", pbf=str(tmp_path / "gone.osm.pbf")))
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "gone.osm.pbf" in failure.step_failure_data.error.message
    assert "neither a local file nor a key" in failure.step_failure_data.error.message
