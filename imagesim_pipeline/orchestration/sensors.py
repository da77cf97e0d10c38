"""The delivery sensor: register newly delivered cells as partitions and request their runs."""


from datetime import datetime, timedelta

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.orchestration.jobs import cell_job
from imagesim_pipeline.orchestration.partitions import ard_cells
from imagesim_pipeline.orchestration.resources import BucketResource

LOOKBACK = timedelta(hours=1)


@sensor(job=cell_job, minimum_interval_seconds=120, default_status=DefaultSensorStatus.RUNNING,
        description="Scans ard/ in the bucket; adds new level-12 cells as partitions and runs the cell job "
                    "for new cells and for cells whose delivery changed since the last tick.")
def ard_delivery_sensor(context: SensorEvaluationContext, bucket: BucketResource) -> SensorResult | SkipReason:
    found = discover_bucket(bucket.get_bucket())
    for problem in found.problems[:20]:
        context.log.warning(f"malformed delivery entry: {problem}")
    existing = set(context.instance.get_dynamic_partitions(ard_cells.name))
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
    run_requests = [
        # The run key makes a re-delivery of identical content never run twice.
        RunRequest(partition_key=cell_id, run_key=f"{cell_id}:{found.cells[cell_id].fingerprint()}",
                   tags={"imagesim/zone": cell_id[1:3]})
        for cell_id in new_cells + changed_cells
    ]
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[ard_cells.build_add_request(new_cells)] if new_cells else [],
        cursor=newest.isoformat() if newest else context.cursor,
    )


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Marks runs failed whose process is gone (killed, crashed), so they hold no run or pool slot; "
                    "see imagesim_pipeline/orchestration/runs.py.")
def orphaned_runs_sensor(context: SensorEvaluationContext) -> SkipReason:
    from imagesim_pipeline.orchestration.runs import fail_orphaned_runs

    failed = fail_orphaned_runs(context.instance)
    for run_id in failed:
        context.log.warning(f"run {run_id} had lost its process: marked failed")
    return SkipReason(f"marked {len(failed)} orphaned run(s) failed" if failed else "no orphaned run")
