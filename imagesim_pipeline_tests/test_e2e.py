"""End to end: real imagery ingested, discovered and materialized through Dagster, locally and on S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from imagesim_pipeline.settings import PROJECT_ROOT

IMAGESIM = str(Path(sys.executable).parent / "imagesim")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([IMAGESIM, *args], cwd=PROJECT_ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=600)


def materializations(instance: DagsterInstance) -> dict[str, dict]:
    records = instance.fetch_materializations(AssetKey("ard_tile"), limit=1000).records
    return {r.partition_key: r.asset_materialization.metadata for r in records}


@pytest.mark.e2e
def test_local_bucket_end_to_end_with_a_broken_cell(bucket_copy, dagster_home):
    env = {"IMAGESIM_BUCKET": str(bucket_copy), "DAGSTER_HOME": str(dagster_home)}
    # Damage one delivery: its visual COG is cut in half. That cell fails, the others go on.
    broken = next((bucket_copy / "ard" / "16").rglob("*-visual.tif"))
    broken.write_bytes(broken.read_bytes()[:3000])
    broken_cell = "Z16-" + broken.parent.parent.name

    listed = run_cli("discover", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "registered" in listed.stdout
    run = run_cli("materialize", env=env)
    assert run.returncode == 1
    assert f"1 cell(s) failed: {broken_cell}" in run.stderr
    assert "truncated" in run.stdout  # the reason is shown next to the failed cell

    instance = DagsterInstance.get()
    cells = instance.get_dynamic_partitions("ard_cells")
    done = materializations(instance)
    assert set(done) == set(cells) - {broken_cell}
    deepforest = next(m for c, m in done.items() if c.startswith("Z31-"))
    assert deepforest["acquisitions"].value == 1
    assert deepforest["catalog_ids"].value == "DEEPFOREST01"
    assert deepforest["epsg"].value == 32631
    assert 0 < deepforest["footprint_km2"].value < 0.1  # a 250 m x 250 m orthophoto
    assert deepforest["bytes"].value > 100_000
    assert deepforest["footprint_wgs84"].value["type"] in ("Polygon", "MultiPolygon")

    # The rest of the cell job ran too: OSM documents, chips and the bucket's nodata index.
    bucket = bucket_copy
    assert (bucket / "ard" / "31" / "102220011031" / "osm_data.json").is_file()
    index = json.loads((bucket / "nodata-index.json").read_text())
    assert any(name.startswith("Z31-") for name in index)
    assert not any(name.startswith(broken_cell) for name in index)

    # Re-running a cell is idempotent: same data version, one more materialization.
    again = run_cli("materialize", next(iter(done)), env=env)
    assert again.returncode == 0, again.stderr


@pytest.mark.e2e
@pytest.mark.s3
def test_s3_bucket_end_to_end(samples, s3_env, dagster_home):
    env = {"IMAGESIM_BUCKET": s3_env, "DAGSTER_HOME": str(dagster_home)}
    ingest = run_cli("ingest", str(samples["sample_geotiff.tif"]), "--catalog-id", "SOLARIS01",
                     "--date", "2018-03-20", env=env)
    assert ingest.returncode == 0, ingest.stderr
    assert "wrote 2 cell(s)" in ingest.stdout
    discover = run_cli("discover", env=env)
    assert discover.returncode == 0, discover.stderr
    run = run_cli("materialize", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    done = materializations(DagsterInstance.get())
    assert len(done) == 2
    for cell, meta in done.items():
        assert cell.startswith("Z16-")
        assert meta["location"].value.startswith(s3_env)
        assert meta["acquisition_table"].value.count("SOLARIS01") == 1
    # labels were written to S3 by datamaker_job; the dataset is built and read back from S3 too
    instance = DagsterInstance.get()
    labelled = instance.fetch_materializations(AssetKey("chip_labels"), limit=10).records
    assert {r.partition_key for r in labelled} == set(done)
    assert all(r.asset_materialization.metadata["table"].value.startswith(s3_env) for r in labelled)
    build = run_cli("dataset", "build", "-s", "unlabelled_share=1.0", "-s", "keep_classes=[all data, partial data]",
                    env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    stats = run_cli("dataset", "stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    summary = json.loads(stats.stdout)
    (dataset,) = instance.fetch_materializations(AssetKey("training_dataset"), limit=10).records
    meta = dataset.asset_materialization.metadata
    assert summary["version"] == meta["version"].value
    assert sum(summary["chips_by_split"].values()) == meta["chips"].value > 0  # the -s settings reached the run
    assert meta["manifest"].value.startswith(s3_env + "/datasets/")
