"""Scripted use of the Dagster instance: register partitions and run jobs (for the CLI and CI)."""

from __future__ import annotations

import time
from typing import Callable

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.orchestration.loggers import SCRIPTED_RUN_CONFIG
from imagesim_pipeline.orchestration.runs import fail_orphaned_runs, process_tags
from imagesim_pipeline.settings import dagster_home


def _instance():
    from dagster import DagsterInstance

    dagster_home()
    return DagsterInstance.get()


def register_cells(cell_ids: list[str]) -> list[str]:
    """Add the cells that are not yet partitions of ``ard_cells``; returns the added ones."""
    from imagesim_pipeline.orchestration.partitions import ard_cells

    instance = _instance()
    existing = set(instance.get_dynamic_partitions(ard_cells.name))
    added = [c for c in cell_ids if c not in existing]
    if added:
        instance.add_dynamic_partitions(ard_cells.name, added)
    return added


def _clear_orphans(instance, progress: Callable[[str], None]) -> None:
    failed = fail_orphaned_runs(instance)
    if failed:
        progress(f"  marked {len(failed)} run(s) failed whose process is gone (killed or crashed): "
                 f"{', '.join(r[:8] for r in failed)}")


def _why_unregistered(cell_id: str, bucket_uri: str | None = None) -> str:
    """Why a cell is not a partition, and what fixes it: discovery, or the delivery itself."""
    from imagesim_pipeline.ard.discovery import discover_bucket
    from imagesim_pipeline.ard.grid import ArdCell, GridError
    from imagesim_pipeline.storage import layout, open_bucket

    try:
        cell = ArdCell.parse(cell_id)
    except GridError as exc:
        return f"{cell_id} is not a cell id ({exc})"
    bucket = open_bucket(bucket_uri)
    prefix = layout.ard_cell_prefix(cell.id)
    found = discover_bucket(bucket, prefix)
    if cell.id in found.cells:
        return f"{cell.id} is delivered but not registered: run `imagesim discover`"
    if found.problems:
        reasons = "; ".join(str(p) for p in found.problems[:3])
        return (f"{cell.id} has no usable acquisition ({reasons}): fix or re-deliver {bucket.url(prefix)} "
                "(`imagesim ingest`), then run `imagesim discover`")
    return f"{cell.id} has no delivery under {bucket.url(prefix)}: ingest or deliver it, then run `imagesim discover`"


def scripted_run_config(bucket: str | None = None, run_config: dict | None = None) -> dict:
    """Run config of a scripted run: the one-line console logger, ``bucket`` for every asset's bucket
    resource when given (else the resource's own setting), and ``run_config`` on top."""
    config = {**SCRIPTED_RUN_CONFIG, **(run_config or {})}
    if bucket is not None:
        config["resources"] = {**config.get("resources", {}), "bucket": {"config": {"uri": str(bucket)}}}
    return config


def run_cells(cell_ids: list[str] | None = None, job_name: str = "cell_job",
              progress: Callable[[str], None] = print, bucket: str | None = None) -> list[str]:
    """Run ``job_name`` once per cell partition (default: all registered) over ``bucket`` (default: the
    configured one); returns the failed cells."""
    from imagesim_pipeline.definitions import defs
    from imagesim_pipeline.orchestration.partitions import ard_cells

    instance = _instance()
    known = instance.get_dynamic_partitions(ard_cells.name)
    cells = list(cell_ids) if cell_ids else list(known)
    if not cells:
        raise ImagesimError(f"no cell is registered as a partition in the Dagster instance at {dagster_home()}: "
                            "run `imagesim discover` (it registers every delivered cell)")
    unknown = sorted(set(cells) - set(known))
    if unknown:
        raise ImagesimError("; ".join(_why_unregistered(cell, bucket) for cell in unknown))
    job = defs.resolve_job_def(job_name)
    _clear_orphans(instance, progress)
    failures = []
    for i, cell_id in enumerate(cells, 1):
        started = time.perf_counter()
        result = job.execute_in_process(partition_key=cell_id, instance=instance, raise_on_error=False,
                                        run_config=scripted_run_config(bucket), tags=process_tags())
        status = "ok" if result.success else "FAILED"
        progress(f"  [{i}/{len(cells)}] {cell_id}: {status} in {time.perf_counter() - started:.1f} s (run {result.run_id[:8]})")
        if not result.success:
            failures.append(cell_id)
            for event in result.all_events:
                if event.is_step_failure:
                    progress(f"      {event.step_failure_data.error.message.strip().splitlines()[0]}")
    return failures


def run_job(job_name: str, progress: Callable[[str], None] = print, run_config: dict | None = None,
            bucket: str | None = None) -> bool:
    """Run an unpartitioned job once (e.g. ``dataset_job``) over ``bucket`` (default: the configured one);
    returns whether it succeeded."""
    from imagesim_pipeline.definitions import defs

    instance = _instance()
    _clear_orphans(instance, progress)
    started = time.perf_counter()
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, raise_on_error=False, run_config=scripted_run_config(bucket, run_config),
        tags=process_tags())
    progress(f"  {job_name}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - started:.1f} s "
             f"(run {result.run_id[:8]})")
    for event in result.all_events:
        if event.is_step_failure:
            progress(f"      {event.step_failure_data.error.message.strip().splitlines()[0]}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                progress(f"      check {evaluation.check_name} did not pass ({evaluation.severity.value})")
    return result.success
