"""Sensors: deliveries start the datamaker, a new dataset version starts training, a published model
starts re-encoding, a failed run leaves a readable summary in the bucket, and orphaned runs are freed.

None of them redoes work the bucket already holds: a dataset version with a published model is not
trained again, a model with an index is not re-encoded, registered cells are not re-chipped unless
their delivery changed. So starting the daemon over a bucket that scripts filled (``make demo``)
starts no run."""


from datetime import UTC, datetime, timedelta

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    EventLogEntry,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_sensor,
    run_failure_sensor,
    sensor,
)

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.orchestration.failures import RUN_RETRY_TAGS, step_failure_message
from imagesim_pipeline.orchestration.jobs import datamaker_job, encoder_job, trainer_job
from imagesim_pipeline.orchestration.partitions import ARD_CELLS, ard_cells
from imagesim_pipeline.orchestration.resources import BucketResource

LOOKBACK = timedelta(hours=1)
MAX_NEW_CELLS_PER_TICK = 2_000
"""New cells registered per tick; a bigger delivery is taken over the next ticks (each tick stays well
inside the sensor's 60 s evaluation limit; see benchmarks/bench_delivery_sensor.py)."""


@sensor(job=datamaker_job, minimum_interval_seconds=120, default_status=DefaultSensorStatus.RUNNING,
        description="Scans ard/ in the bucket; adds new level-12 cells as partitions and runs datamaker_job "
                    "for new cells and for cells whose delivery changed since the last tick.")
def ard_delivery_sensor(context: SensorEvaluationContext, bucket: BucketResource) -> SensorResult | SkipReason:
    """Register new cells and run datamaker_job for new or changed deliveries."""
    found = discover_bucket(bucket.get_bucket())
    for problem in found.problems[:20]:
        context.log.warning(f"malformed delivery entry: {problem}")
    existing = set(context.instance.get_dynamic_partitions(ARD_CELLS))
    since = datetime.fromisoformat(context.cursor) if context.cursor else None
    # Look back a while: an S3 multipart upload's LastModified is when it *started*, so a large
    # COG that finished after the last tick may carry an older time. Run keys drop repeats.
    recent = since - LOOKBACK if since else None
    new_cells, changed_cells, newest = [], [], since
    for cell_id, delivery in sorted(found.cells.items()):
        modified = max(a.modified for a in delivery.acquisitions if a.modified)
        newest = modified if newest is None or modified > newest else newest
        if cell_id not in existing:
            new_cells.append(cell_id)
        elif recent is not None and modified >= recent:
            changed_cells.append(cell_id)
    if not new_cells and not changed_cells:
        return SkipReason(f"no new or changed deliveries among {len(found.cells)} cells")
    cursor = newest.isoformat() if newest else context.cursor
    if len(new_cells) > MAX_NEW_CELLS_PER_TICK:
        context.log.info(f"{len(new_cells)} new cells: registering {MAX_NEW_CELLS_PER_TICK} now, the rest on the "
                         "next ticks")
        new_cells, cursor = new_cells[:MAX_NEW_CELLS_PER_TICK], context.cursor
    run_requests = [
        # The run key makes a re-delivery of identical content never run twice.
        RunRequest(partition_key=cell_id, run_key=f"{cell_id}:{found.cells[cell_id].fingerprint()}",
                   tags={"imagesim/zone": cell_id[1:3], **RUN_RETRY_TAGS})
        for cell_id in new_cells + changed_cells
    ]
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[ard_cells.build_add_request(new_cells)] if new_cells else [],
        cursor=cursor,
    )


def _metadata_value(event: EventLogEntry, name: str):
    materialization = event.asset_materialization
    entry = materialization.metadata.get(name) if materialization else None
    return entry.value if entry is not None else None


@asset_sensor(asset_key=AssetKey("training_dataset"), job=trainer_job, default_status=DefaultSensorStatus.RUNNING,
              minimum_interval_seconds=60,
              description="A new training dataset version starts training (smlc_model, onnx_model) on it, unless "
                          "a published model was already trained on it; the model is published only when its "
                          "checks pass.")
def dataset_version_sensor(context: SensorEvaluationContext, asset_event: EventLogEntry, bucket: BucketResource
                           ) -> RunRequest | SkipReason:
    """Train on a new dataset version unless a published model already was."""
    from imagesim_pipeline.models.registry import published_versions

    version = _metadata_value(asset_event, "version")
    if not version:
        return SkipReason("the latest training_dataset materialization names no version")
    trained = [m.version for m in published_versions(bucket.get_bucket()) if m.dataset_version == version]
    if trained:  # e.g. the demo trained it by script, or another instance did: nothing to redo
        return SkipReason(f"dataset {version} already has a published model ({', '.join(trained)})")
    # The run key trains each dataset version once, however often the dataset is rebuilt unchanged.
    return RunRequest(run_key=f"train-{version}", asset_selection=[AssetKey("smlc_model"), AssetKey("onnx_model")],
                      run_config={"ops": {"smlc_model": {"config": {"dataset_version": version}}}},
                      tags={"imagesim/dataset_version": version, **RUN_RETRY_TAGS})


@asset_sensor(asset_key=AssetKey("onnx_model"), job=encoder_job, default_status=DefaultSensorStatus.RUNNING,
              minimum_interval_seconds=60,
              description="A newly published model re-encodes every registered cell in one run, then builds its "
                          "similarity index (which moves search to it) and change table; a model that already has "
                          "an index is not re-encoded.")
def model_promoted_sensor(context: SensorEvaluationContext, asset_event: EventLogEntry, bucket: BucketResource
                          ) -> RunRequest | SkipReason:
    """Encode every cell and index them for a newly published model."""
    from imagesim_pipeline.search.stores import has_index

    version = _metadata_value(asset_event, "version")
    if not (_metadata_value(asset_event, "published") or _metadata_value(asset_event, "promoted")):
        return SkipReason(f"model {version} was not published (its checks did not pass): nothing to re-encode")
    if has_index(bucket.get_bucket(), str(version)):
        return SkipReason(f"model {version} already has a similarity index: nothing to re-encode")
    cells = context.instance.get_dynamic_partitions(ARD_CELLS)
    if not cells:
        return SkipReason("no registered cell to encode")
    return RunRequest(run_key=f"encode-{version}", tags={
        "dagster/asset_partition_range_start": cells[0], "dagster/asset_partition_range_end": cells[-1],
        "imagesim/model_version": str(version), **RUN_RETRY_TAGS})


def _launched_by(tags) -> str:
    for tag, what in (("dagster/sensor_name", "sensor"), ("dagster/schedule_name", "schedule"),
                      ("dagster/backfill", "backfill")):
        if tag in tags:
            return f"{what} {tags[tag]}"
    return "hand (UI, CLI or script)"


def failure_summary(context: RunFailureSensorContext) -> str:
    """A failed run in Markdown: what ran, which steps failed and why, how to run it again."""
    run = context.dagster_run
    partition = run.tags.get("dagster/partition")
    lines = [f"# {run.job_name} failed", "",
             f"- run: `{run.run_id}`" + (f" (partition `{partition}`)" if partition else ""),
             f"- when: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
             f"- launched by: {_launched_by(run.tags)}",
             "", "## Failed steps", ""]
    failures = context.get_step_failure_events()  # reads the run's event log
    for event in failures:
        lines.append(f"- `{event.step_key}`: {step_failure_message(event)}")
    if not failures:
        lines.append(f"- none: the run itself failed ({context.failure_event.message})")
    again = f" --tags '{{\"dagster/partition\": \"{partition}\"}}'" if partition else ""
    lines += ["", "## Next", "",
              f"Fix the cause named above, then re-run from the failure in the UI (Runs → `{run.run_id[:8]}` → "
              "Re-execute from failure) or "
              f"`dagster job execute -m imagesim_pipeline.definitions -j {run.job_name}{again}`."]
    return "\n".join(lines) + "\n"


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
                    description="Writes a readable summary of every failed run to ops/run-failures/ in the bucket.")
def run_failure_summary_sensor(context: RunFailureSensorContext, bucket: BucketResource) -> None:
    """Write a failed run's summary to the bucket."""
    from imagesim_pipeline.storage import layout

    run = context.dagster_run
    key = layout.run_failure_key(f"{datetime.now(UTC):%Y-%m-%d}", run.job_name, run.run_id)
    store = bucket.get_bucket()
    store.write_bytes(key, failure_summary(context).encode())
    context.log.info(f"summary of failed run {run.run_id} at {store.url(key)}")


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Marks runs failed whose process is gone (killed, crashed), so they hold no run or pool slot; "
                    "see imagesim_pipeline/orchestration/runs.py.")
def orphaned_runs_sensor(context: SensorEvaluationContext) -> SkipReason:
    """Mark runs whose process is gone as failed."""
    from imagesim_pipeline.orchestration.runs import fail_orphaned_runs

    failed = fail_orphaned_runs(context.instance)
    for run_id in failed:
        context.log.warning(f"run {run_id} had lost its process: marked failed")
    return SkipReason(f"marked {len(failed)} orphaned run(s) failed" if failed else "no orphaned run")
