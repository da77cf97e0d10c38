"""End to end: chip_embeddings per cell, similarity_index and chip_changes through Dagster; the search CLI;
and once against a local S3-compatible server."""

from __future__ import annotations

import json
import shutil

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.cli import main
from imagesim_pipeline.embeddings.cell_embeddings import kept_chips
from imagesim_pipeline.models.registry import model_key
from imagesim_pipeline.orchestration.partitions import ard_cells
from imagesim_pipeline.storage import layout, open_bucket
from imagesim_pipeline.storage.layout import cell_changes_key
from imagesim_pipeline_tests.conftest import chip_cells


def _run(uri: str, version: str, cells: list[str]):
    """encoder_job in one run over the range ``cells[0]..cells[-1]`` of registered cells."""
    from imagesim_pipeline.definitions import defs

    instance = DagsterInstance.get()
    ops = {op: {"config": {"version": version}} for op in ("chip_embeddings", "similarity_index", "chip_changes")}
    config = {"resources": {"bucket": {"config": {"uri": uri}}}, "ops": ops}
    tags = {"dagster/asset_partition_range_start": cells[0], "dagster/asset_partition_range_end": cells[-1]}
    result = defs.resolve_job_def("encoder_job").execute_in_process(instance=instance, run_config=config, tags=tags,
                                                                    raise_on_error=False)
    return instance, result


@pytest.mark.e2e
def test_encoder_job_over_every_cell_in_one_run_then_the_cli(demo_model, tmp_path, dagster_home, capsys):
    root, version = demo_model
    shutil.copytree(root, tmp_path / "bucket")
    bucket = open_bucket(tmp_path / "bucket")
    uri = str(tmp_path / "bucket")
    cells = chip_cells(bucket)
    DagsterInstance.get().add_dynamic_partitions(ard_cells.name, cells)
    instance, result = _run(uri, version, cells)
    assert result.success
    # one step encoded every cell of the range, each partition materialized, then the index once
    assert len(result.get_step_success_events()) == 3
    assert instance.get_materialized_partitions(AssetKey("chip_embeddings")) == set(cells)
    assert all(bucket.exists(layout.embeddings_key(version, cell)) for cell in cells)
    meta = instance.get_latest_materialization_event(AssetKey("chip_embeddings")).asset_materialization.metadata
    assert meta["chips"].value == sum(len(kept_chips(bucket, c)) for c in cells)
    assert meta["cells"].value == len(cells) and meta["model_version"].value == version
    index_meta = instance.get_latest_materialization_event(AssetKey("similarity_index")).asset_materialization.metadata
    assert index_meta["vectors"].value == sum(len(kept_chips(bucket, c)) for c in cells)
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [AssetCheckKey(AssetKey("similarity_index"), "finds_itself")])
    assert all(c.status.value == "SUCCEEDED" for c in check.values())
    changes = instance.get_latest_materialization_event(AssetKey("chip_changes")).asset_materialization.metadata
    assert changes["pairs"].value > 0 and "top_pairs" in changes
    # the encoder scored every pair in its pass (one change file per cell); chip_changes only joined them
    assert changes["method"].value == "feature-maps" and changes["maps"].value == changes["pairs"].value
    assert meta["pairs_scored"].value == changes["pairs"].value
    assert all(bucket.exists(cell_changes_key(version, cell)) for cell in cells)
    # the CLI over what the jobs wrote
    chip = kept_chips(bucket, cells[0])[0]["chip"]
    out = tmp_path / "hits.geojson"
    assert main(["search", "--bucket", uri, "--version", version, "--chip", chip, "--k", "5",
                 "--geojson", str(out)]) == 0
    table = capsys.readouterr().out
    features = json.loads(out.read_text())["features"]
    assert len(features) == 5 and all(f["properties"]["chip"] in table for f in features)
    assert ChipName.parse(chip).cell.id not in {f["properties"]["place"] for f in features}
    assert main(["search", "--bucket", uri, "--version", version, "--chip", "Z35-01313310300300000_NONE.jpg"]) == 2
    assert "unknown chip id" in capsys.readouterr().err
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    assert main(["search", "--bucket", uri, "--version", version, "--image", str(junk)]) == 2
    assert "junk.jpg is not an image" in capsys.readouterr().err  # checked before the index is opened
    assert main(["search", "--bucket", uri, "--version", "v-none", "--chip", chip]) == 2
    assert "no similarity index" in capsys.readouterr().err
    assert main(["changes", "--bucket", uri, "--version", version, "--top", "3", "--map", str(tmp_path / "maps")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "place pairs" in lines[0] and "score from feature-maps" in lines[0] and len(lines) == 7
    assert "demo truth:" in lines[5] and "of these 3 are places where buildings vanished" in lines[5]
    assert len(list((tmp_path / "maps").glob("*.jpg"))) == 3


@pytest.mark.e2e
@pytest.mark.s3
def test_embeddings_index_and_search_on_s3(demo_model, s3_env, dagster_home):
    from imagesim_pipeline.search.engine import SearchEngine

    root, version = demo_model
    local = open_bucket(root)
    s3 = open_bucket(s3_env)
    cell = min(chip_cells(local), key=lambda c: len(kept_chips(local, c)) or 10 ** 9)
    s3.write_bytes(layout.chip_manifest_key(cell), local.read_bytes(layout.chip_manifest_key(cell)))
    for row in kept_chips(local, cell):
        key = chip_key(ChipName.parse(row["chip"]))
        s3.write_bytes(key, local.read_bytes(key))
    for obj in local.list(model_key("smlc", version, "")):  # the published version, manifest included
        s3.write_bytes(obj.key, local.read_bytes(obj.key))
    DagsterInstance.get().add_dynamic_partitions(ard_cells.name, [cell])
    instance, result = _run(s3_env, version, [cell])
    assert result.success
    meta = instance.get_latest_materialization_event(AssetKey("similarity_index")).asset_materialization.metadata
    assert meta["location"].value.startswith(s3_env)
    engine = SearchEngine(s3, version=version)
    chip = engine.store.chips[0]
    hits = engine.by_chip(chip, k=3)
    assert len(hits) == 3 and ChipName.parse(chip).cell.id not in {h.place for h in hits}
