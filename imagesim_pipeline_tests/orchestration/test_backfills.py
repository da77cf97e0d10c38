"""Zone backfills: `imagesim backfill --zone` stores one asset backfill over the zone's registered cells,
and the daemon runs it to the end over the demo world."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.orchestration.partitions import ard_cells
from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline_tests.conftest import stop_process_group, world_site

BIN = Path(sys.executable).parent
CELLS = ["Z33-120020223133", "Z33-120020223132", "Z35-013133111131"]


def test_a_zone_backfill_covers_the_zones_cells_only(dagster_home):
    from imagesim_pipeline.orchestration.backfills import launch_zone_backfill

    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, CELLS)
    launched = launch_zone_backfill(instance, 33)
    assert launched.cells == CELLS[:2]
    backfill = instance.get_backfill(launched.backfill_id)
    assert backfill.status.value == "REQUESTED" and backfill.tags["imagesim/zone"] == "33"
    targeted = backfill.asset_backfill_data.target_subset
    assert set(targeted.asset_keys) == {AssetKey(a) for a in ("ard_tile", "osm_data", "chips", "nodata_index",
                                                              "chip_labels")}
    assert set(targeted.get_partitions_subset(AssetKey("chips")).get_partition_keys()) == set(CELLS[:2])

    only = launch_zone_backfill(instance, 35, ["osm_data", "chip_labels"])
    targeted = instance.get_backfill(only.backfill_id).asset_backfill_data.target_subset
    assert set(targeted.asset_keys) == {AssetKey("osm_data"), AssetKey("chip_labels")}
    assert set(targeted.get_partitions_subset(AssetKey("osm_data")).get_partition_keys()) == {CELLS[2]}


def test_a_zone_without_cells_or_an_unknown_asset_says_what_there_is(dagster_home):
    from imagesim_pipeline.orchestration.backfills import launch_zone_backfill

    instance = DagsterInstance.get()
    with pytest.raises(ImagesimError, match="no cell is registered at all; run `imagesim discover`"):
        launch_zone_backfill(instance, 33)
    instance.add_dynamic_partitions(ard_cells.name, CELLS)
    with pytest.raises(ImagesimError, match=r"no registered cell in UTM zone 34 \(registered zones: 33, 35\)"):
        launch_zone_backfill(instance, 34)
    with pytest.raises(ImagesimError, match="not a per-cell asset: smlc_model"):
        launch_zone_backfill(instance, 33, ["smlc_model"])
    assert not instance.get_backfills()


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_zone_backfill_over_the_demo_world_completes_through_the_daemon(world, tmp_path):
    from imagesim_pipeline.storage import layout, open_bucket

    bucket_root, env = world_site(world[0], tmp_path)
    subprocess.run([BIN / "imagesim", "discover"], env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)
    # dg's route to one partition of the main job, in process, before the backfill
    launched = subprocess.run([BIN / "dg", "launch", "--job", "datamaker_job", "--partition", world[1][0]], env=env,
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    [by_dg] = DagsterInstance.from_config(env["DAGSTER_HOME"]).get_runs()
    assert by_dg.job_name == "datamaker_job" and by_dg.tags["dagster/partition"] == world[1][0]
    assert by_dg.status == DagsterRunStatus.SUCCESS
    daemon = subprocess.Popen([BIN / "dagster-daemon", "run", "-w", "workspace.yaml"], env=env, cwd=PROJECT_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run = subprocess.run([BIN / "imagesim", "backfill", "--zone", "35", "--wait"], env=env, cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=840)
    finally:
        stop_process_group(daemon)
    assert daemon.poll() is not None
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert all(c.startswith("Z35-") for c in world[1])
    assert f"over {len(world[1])} cell(s) of zone 35" in run.stdout and "completed_success" in run.stdout
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    backfill_id = run.stdout.split()[1].rstrip(":")
    runs = instance.get_runs(RunsFilter.for_backfill(backfill_id))
    assert len(instance.get_runs()) == len(runs) + 1  # the dg run, then one run per cell
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(world[1])
    assert all(r.status == DagsterRunStatus.SUCCESS and r.tags["imagesim/zone"] == "35" for r in runs)
    bucket = open_bucket(bucket_root)
    for cell in world[1]:
        assert bucket.exists(layout.chip_manifest_key(cell)) and bucket.exists(layout.labels_key(cell)), cell
    instance.dispose()
