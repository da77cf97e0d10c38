"""The Dagster code location: it loads, validates, and its sensor registers cells and requests runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dagster import (
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from imagesim_pipeline.orchestration.partitions import ard_cells
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline.orchestration.sensors import ard_delivery_sensor
from imagesim_pipeline.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent


def test_dagster_validates_the_workspace(dagster_home):
    proc = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "imagesim_pipeline" in proc.stdout + proc.stderr


def test_dg_check_defs_passes(dagster_home):
    proc = subprocess.run([str(BIN / "dg"), "check", "defs"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dagster_commands_work_in_the_project_folder_with_nothing_exported():
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "IMAGESIM_", "AWS_"))}
    for deployment, command in (("local", ["dagster", "definitions", "validate", "-m", "imagesim_pipeline.definitions"]),
                                ("local", ["dg", "check", "defs"]),
                                ("aws", ["dagster", "definitions", "validate", "-m", "imagesim_pipeline.definitions"])):
        proc = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=PROJECT_ROOT,
                              env={**env, "IMAGESIM_DEPLOYMENT": deployment}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr


def test_definitions_hold_the_partitioned_asset_job_and_sensor():
    from imagesim_pipeline.definitions import defs

    job = defs.resolve_job_def("datamaker_job")
    assert job.partitions_def == ard_cells
    assert {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} >= {"ard_tile"}
    assert defs.resolve_sensor_def("ard_delivery_sensor").job_name == "datamaker_job"

    def keys(name):
        return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.executable_asset_keys}

    assert keys("datamaker_job") == {"ard_tile", "osm_data", "chips", "nodata_index", "chip_labels"}
    assert keys("trainer_job") == {"training_dataset", "smlc_model", "onnx_model"}
    assert keys("encoder_job") == {"chip_embeddings", "similarity_index", "chip_changes"}
    assert defs.resolve_job_def("trainer_job").partitions_def is None
    assert defs.resolve_job_def("encoder_job").partitions_def == ard_cells
    assert defs.resolve_schedule_def("dataset_nightly").job_name == "trainer_job"
    assert defs.resolve_sensor_def("dataset_version_sensor").job_name == "trainer_job"
    assert defs.resolve_sensor_def("model_promoted_sensor").job_name == "encoder_job"


def test_sensor_registers_new_cells_and_reruns_only_changed_ones(dagster_home, bucket_copy):
    instance = DagsterInstance.get()
    resource = BucketResource(uri=str(bucket_copy))
    result = ard_delivery_sensor(build_sensor_context(instance=instance, resources={"bucket": resource}))
    assert isinstance(result, SensorResult)
    added = result.dynamic_partitions_requests[0].partition_keys
    assert len(added) == len(result.run_requests) >= 5
    assert {r.partition_key for r in result.run_requests} == set(added)
    instance.add_dynamic_partitions(ard_cells.name, added)

    # Nothing new: no partition to add and no run key Dagster has not seen (it drops repeats).
    again = ard_delivery_sensor(build_sensor_context(instance=instance, resources={"bucket": resource},
                                                     cursor=result.cursor))
    seen = {r.run_key for r in result.run_requests}
    assert isinstance(again, SkipReason) or (
        not again.dynamic_partitions_requests and {r.run_key for r in again.run_requests} <= seen)

    # A second acquisition lands in one cell: only that cell runs, with a new run key.
    cell_dir = next((bucket_copy / "ard" / "31").glob("*"))
    src = next(cell_dir.glob("*/"))
    shutil.copytree(src, cell_dir / "2025-05-05", copy_function=shutil.copy)  # lands now: new mtimes
    changed = ard_delivery_sensor(build_sensor_context(instance=instance, resources={"bucket": resource},
                                                       cursor=result.cursor))
    assert isinstance(changed, SensorResult)
    assert changed.dynamic_partitions_requests == []
    fresh = [r for r in changed.run_requests if r.run_key not in seen]
    assert [r.partition_key for r in fresh] == [f"Z31-{cell_dir.name}"]
