"""Change maps through the API: every listed change links its heat overlay; bad pairs and missing maps say what to
do; a model without feature maps lists embedding changes with no map (and chip_changes says so)."""

from __future__ import annotations

import io
import shutil

import numpy as np
import onnx
import pytest
from dagster import DagsterInstance, materialize
from fastapi.testclient import TestClient
from PIL import Image

from imagesim_pipeline.changes.cell_changes import read_change_map
from imagesim_pipeline.changes.detect import change_table, read_changes, write_changes
from imagesim_pipeline.changes.maps import heat_overlay
from imagesim_pipeline.chips.naming import ChipName
from imagesim_pipeline.models.registry import publish, read_published_file
from imagesim_pipeline.service.app import create_app
from imagesim_pipeline.storage import layout, open_bucket


@pytest.fixture(scope="module")
def index_copy(demo_index, tmp_path_factory):
    """(root, version): a module copy of the demo index (change table and change maps from feature maps); read
    only."""
    root, version = demo_index
    target = tmp_path_factory.mktemp("change-maps") / "bucket"
    shutil.copytree(root, target)
    return target, version


@pytest.fixture(scope="module")
def client(index_copy):
    root, version = index_copy
    with TestClient(create_app(open_bucket(root), version=version), raise_server_exceptions=False) as c:
        yield c


def _own_copy(index_copy, tmp_path):
    target = tmp_path / "bucket"
    shutil.copytree(index_copy[0], target)
    return open_bucket(target)


def test_changes_link_their_maps_and_the_top_map_is_a_visible_overlay(client, index_copy):
    """Feature-map rows each have a map_url; the top one answers an RGBA PNG, the stored map as heat colours."""
    root, version = index_copy
    body = client.get("/api/changes", params={"k": 10}).json()
    assert len(body["changes"]) == 10
    for c in body["changes"]:
        assert c["method"] == "feature-maps" and c["change"] is not None
        assert c["map_url"] == f"/api/changes/{c['before']}/{c['after']}/map.png"
    top = body["changes"][0]
    response = client.get(top["map_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "RGBA"
    rgba = np.asarray(image)
    assert rgba[..., 3].max() > 0  # the most changed place shows some heat
    bucket = open_bucket(root)
    key = layout.cell_changes_key(version, ChipName.parse(top["before"]).tile.id)
    assert np.array_equal(rgba, heat_overlay(read_change_map(bucket, key, top["before"], top["after"])))
    # the pair the other way round has no map
    reversed_pair = client.get(f"/api/changes/{top['after']}/{top['before']}/map.png")
    assert reversed_pair.status_code == 404 and "has no change map" in reversed_pair.json()["detail"]


def test_a_map_of_two_places_is_refused_and_a_missing_cell_file_says_what_to_materialize(index_copy, tmp_path):
    """Chips of two places: 422; a valid pair whose cell has no change file: 404 naming chip_changes."""
    bucket = _own_copy(index_copy, tmp_path)
    version = index_copy[1]
    rows = read_changes(bucket, version).to_pylist()
    first = rows[0]
    other = next(r for r in rows if r["place"] != first["place"])
    with TestClient(create_app(bucket, version=version), raise_server_exceptions=False) as c:
        mixed = c.get(f"/api/changes/{first['chip_before']}/{other['chip_after']}/map.png")
        assert mixed.status_code == 422 and "different places" in mixed.json()["detail"]
        url = f"/api/changes/{first['chip_before']}/{first['chip_after']}/map.png"
        assert c.get(url).status_code == 200
        bucket.delete(layout.cell_changes_key(version, first["cell"]))
        missing = c.get(url)
        assert missing.status_code == 404
        assert "materialize chip_changes" in missing.json()["detail"] and first["cell"] in missing.json()["detail"]


def test_embedding_changes_have_no_map_url_and_a_rewritten_table_is_served_without_a_restart(index_copy, tmp_path):
    """A change table without feature maps (a model exported before them): method embedding, map_url null; the
    running service serves it as soon as chip_changes rewrites the table of the version it serves."""
    bucket = _own_copy(index_copy, tmp_path)
    version = index_copy[1]
    with TestClient(create_app(bucket, version=version), raise_server_exceptions=False) as c:
        assert c.get("/api/changes", params={"k": 3}).json()["changes"][0]["method"] == "feature-maps"
        write_changes(bucket, version, change_table(bucket, version))
        body = c.get("/api/changes", params={"k": 10}).json()
    assert len(body["changes"]) == 10
    for change in body["changes"]:
        assert change["method"] == "embedding" and change["map_url"] is None and change["change"] is None
    scores = [change["score"] for change in body["changes"]]
    assert scores == sorted(scores, reverse=True)


def test_chip_changes_of_a_model_without_feature_maps_warns_and_uses_the_embedding(index_copy, tmp_path):
    """chip_changes on an older export: a warning, metadata method embedding and no maps, a table without maps."""
    from imagesim_pipeline.orchestration.resources import BucketResource
    from imagesim_pipeline.orchestration.search_assets import chip_changes

    bucket = _own_copy(index_copy, tmp_path)
    version = index_copy[1]
    proto = onnx.load_from_string(read_published_file(bucket, "smlc", version, "model.onnx"))
    old = onnx.utils.Extractor(proto).extract_model(["input"], ["logits", "embedding"])  # an export of before
    old.metadata_props.extend(proto.metadata_props)
    publish(bucket, "smlc", "v-old", {"model.onnx": old.SerializeToString()}, "d-1", "v-old")
    shutil.copytree(bucket.root / layout.embeddings_prefix(version), bucket.root / layout.embeddings_prefix("v-old"))
    instance = DagsterInstance.ephemeral()
    result = materialize([chip_changes], instance=instance, raise_on_error=False,
                         resources={"bucket": BucketResource(uri=str(bucket.root))},
                         run_config={"ops": {"chip_changes": {"config": {"version": "v-old"}}}})
    assert result.success
    meta = result.asset_materializations_for_node("chip_changes")[0].metadata
    assert meta["method"].value == "embedding" and meta["maps"].value == 0 and meta["pairs"].value > 100
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == 30]
    assert any("smlc/v-old was exported before feature maps" in w for w in warnings)
    table = read_changes(bucket, "v-old")
    assert set(table.column("method").to_pylist()) == {"embedding"} and set(table.column("map").to_pylist()) == {""}
    assert not bucket.exists(layout.cell_changes_key("v-old", table.column("cell")[0].as_py()))
