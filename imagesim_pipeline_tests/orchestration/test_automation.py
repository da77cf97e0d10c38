"""Schedules and sensors beyond deliveries: retraining on a new dataset version, re-encoding after a promotion,
the weekly OSM refresh, failure summaries in the bucket, and which failures are retried."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    Failure,
    RunRequest,
    SkipReason,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    materialize,
)

from imagesim_pipeline.orchestration.partitions import ard_cells
from imagesim_pipeline.orchestration.resources import BucketResource

CELLS = ["Z33-120020223133", "Z33-120020223132", "Z35-013133111131"]


def _evaluate(sensor, instance, cursor=None, bucket=None):
    resources = {"bucket": BucketResource(uri=str(bucket))} if bucket else None
    context = build_sensor_context(instance=instance, cursor=cursor, resources=resources,
                                   repository_def=__import__("imagesim_pipeline.definitions").definitions.defs
                                   .get_repository_def())
    return sensor.evaluate_tick(context)


def _published(bucket_root, version: str, dataset_version: str) -> None:
    """A published model version in the bucket (its manifest is what the sensors read)."""
    from imagesim_pipeline.models.registry import publish
    from imagesim_pipeline.storage import open_bucket

    publish(open_bucket(bucket_root), "smlc", version, {"model.onnx": b"onnx"}, dataset_version, version)


def test_a_new_dataset_version_trains_once(dagster_home, tmp_path):
    from imagesim_pipeline.orchestration.sensors import dataset_version_sensor

    instance = DagsterInstance.get()
    assert not _evaluate(dataset_version_sensor, instance, bucket=tmp_path / "bucket").run_requests
    instance.report_runless_asset_event(AssetMaterialization("training_dataset", metadata={"version": "d-1"}))
    first = _evaluate(dataset_version_sensor, instance, bucket=tmp_path / "bucket")
    [request] = first.run_requests
    assert request.run_key == "train-d-1" and request.asset_selection == [AssetKey("smlc_model"),
                                                                            AssetKey("onnx_model")]
    assert request.run_config["ops"]["smlc_model"]["config"]["dataset_version"] == "d-1"
    assert request.tags["dagster/max_retries"] == "2"
    # nothing new since the cursor: no request; the same version rebuilt gives the same run key (deduplicated)
    assert not _evaluate(dataset_version_sensor, instance, first.cursor, bucket=tmp_path / "bucket").run_requests
    instance.report_runless_asset_event(AssetMaterialization("training_dataset", metadata={"version": "d-1"}))
    again = _evaluate(dataset_version_sensor, instance, first.cursor, bucket=tmp_path / "bucket")
    assert [r.run_key for r in again.run_requests] == ["train-d-1"]


def test_a_dataset_version_with_a_published_model_is_not_trained_again(dagster_home, tmp_path):
    """As after `make demo`: the scripted runs trained the dataset, the daemon's first tick (empty cursor) sees it."""
    from imagesim_pipeline.orchestration.sensors import dataset_version_sensor

    instance = DagsterInstance.get()
    _published(tmp_path / "bucket", "v-a", "d-1")
    instance.report_runless_asset_event(AssetMaterialization("training_dataset", metadata={"version": "d-1"}))
    held = _evaluate(dataset_version_sensor, instance, bucket=tmp_path / "bucket")
    assert not held.run_requests and "already has a published model (v-a)" in held.skip_message
    # another dataset version is trained as before
    instance.report_runless_asset_event(AssetMaterialization("training_dataset", metadata={"version": "d-2"}))
    [request] = _evaluate(dataset_version_sensor, instance, held.cursor, bucket=tmp_path / "bucket").run_requests
    assert request.run_key == "train-d-2"


def test_only_a_published_model_without_an_index_re_encodes_every_cell_in_one_run(dagster_home, tmp_path):
    from imagesim_pipeline.orchestration.sensors import model_promoted_sensor
    from imagesim_pipeline.search.catalog import IndexManifest
    from imagesim_pipeline.storage import layout, open_bucket
    from imagesim_pipeline.storage.records import write_record

    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, CELLS)
    instance.report_runless_asset_event(AssetMaterialization("onnx_model", metadata={"version": "m-1",
                                                                                     "published": False}))
    held = _evaluate(model_promoted_sensor, instance, bucket=tmp_path / "bucket")
    assert not held.run_requests and "was not published" in held.skip_message
    instance.report_runless_asset_event(AssetMaterialization("onnx_model", metadata={"version": "m-2",
                                                                                     "published": True}))
    first = _evaluate(model_promoted_sensor, instance, held.cursor, bucket=tmp_path / "bucket")
    [request] = first.run_requests
    assert request.run_key == "encode-m-2" and request.job_name in (None, "encoder_job")
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) \
        == (CELLS[0], CELLS[-1])
    # once m-2 has its index (as after `make demo`), its materialization asks for nothing
    write_record(open_bucket(tmp_path / "bucket"), layout.index_key("m-2", "manifest.json"), IndexManifest(
        version="m-2", build="b1", labels=["a"], thresholds=[0.5], params={}, index={}, vectors=0, cells={},
        built=0.0))
    again = _evaluate(model_promoted_sensor, instance, held.cursor, bucket=tmp_path / "bucket")
    assert not again.run_requests and "already has a similarity index" in again.skip_message


def test_the_weekly_osm_refresh_relabels_every_cell(dagster_home):
    from imagesim_pipeline.orchestration.jobs import osm_weekly

    instance = DagsterInstance.get()
    saturday = datetime(2026, 11, 21, 4, tzinfo=timezone.utc)
    assert isinstance(osm_weekly(build_schedule_context(instance=instance, scheduled_execution_time=saturday)),
                      SkipReason)
    instance.add_dynamic_partitions(ard_cells.name, CELLS)
    requests = osm_weekly(build_schedule_context(instance=instance, scheduled_execution_time=saturday))
    assert [r.partition_key for r in requests] == CELLS
    assert all(isinstance(r, RunRequest) and r.asset_selection == [AssetKey("osm_data"), AssetKey("chip_labels")]
               for r in requests)
    assert requests[0].run_key == f"osm-2026-W47-{CELLS[0]}" and requests[0].tags["imagesim/zone"] == "33"


def test_a_failed_run_leaves_a_readable_summary_in_the_bucket(dagster_home, bucket_copy):
    from imagesim_pipeline.orchestration.chip_assets import nodata_index
    from imagesim_pipeline.orchestration.sensors import run_failure_summary_sensor
    from imagesim_pipeline.storage import open_bucket

    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, CELLS[:1])
    resource = BucketResource(uri=str(bucket_copy))
    result = materialize([nodata_index], partition_key=CELLS[0], instance=instance, raise_on_error=False,
                         resources={"bucket": resource})
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = next(e for e in instance.all_logs(result.run_id) if e.dagster_event
                   and e.dagster_event.event_type_value == "PIPELINE_FAILURE").dagster_event
    context = build_run_status_sensor_context(sensor_name="run_failure_summary_sensor", dagster_event=failure,
                                              dagster_instance=instance, dagster_run=run,
                                              resources={"bucket": resource}).for_run_failure()
    run_failure_summary_sensor(context)
    [summary] = [o.key for o in open_bucket(bucket_copy).list("ops/run-failures/")]
    assert summary.endswith(f"-{result.run_id}.md")
    text = open_bucket(bucket_copy).read_bytes(summary).decode()
    assert f"partition `{CELLS[0]}`" in text
    assert "`nodata_index`: No chip manifest for" in text and "materialize chips first" in text
    assert "Re-execute from failure" in text and '"dagster/partition": "Z33-120020223133"' in text


def test_only_transient_errors_are_retried():
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.orchestration.failures import step_errors
    from imagesim_pipeline.osm.elements import OverpassUnavailableError
    from imagesim_pipeline.storage import StorageError, StorageUnavailableError

    from imagesim_pipeline.storage.records import CorruptRecordError

    for error, retried in ((StorageUnavailableError("s3 did not answer"), True),
                           (OverpassUnavailableError("busy"), True),
                           (StorageError("no such key"), False), (ImagesimError("bad input"), False),
                           (CorruptRecordError("models/smlc/latest.json is not a valid Pointer record"), False)):
        with pytest.raises(Failure) as failed:
            with step_errors("cell: "):
                raise error
        assert failed.value.allow_retries is retried, error
        assert failed.value.description.startswith(f"cell: {error}")
