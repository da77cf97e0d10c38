"""Scripted use of the Dagster instance: register partitions and run jobs (for the CLI and CI)."""

from __future__ import annotations

import time
from collections.abc import Callable

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.orchestration.failures import step_failure_message
from imagesim_pipeline.orchestration.loggers import SCRIPTED_RUN_CONFIG
from imagesim_pipeline.orchestration.runs import fail_orphaned_runs, process_tags
from imagesim_pipeline.settings import dagster_home


def open_instance():
    """The Dagster instance of ``DAGSTER_HOME`` (the project's ``.dagster`` by default), its storage checked
    first (an unreachable PostgreSQL is one line, not a minute of retries), with imagesim's pools set."""
    from dagster import DagsterInstance

    from imagesim_pipeline.orchestration.compute import configure_pools
    from imagesim_pipeline.orchestration.deployment import check_instance_storage

    check_instance_storage(dagster_home())
    instance = DagsterInstance.get()
    configure_pools(instance)
    return instance


def register_cells(cell_ids: list[str]) -> list[str]:
    """Add the cells that are not yet partitions of ``ard_cells``; returns the added ones."""
    from imagesim_pipeline.orchestration.partitions import ARD_CELLS

    instance = open_instance()
    existing = set(instance.get_dynamic_partitions(ARD_CELLS))
    added = [c for c in cell_ids if c not in existing]
    if added:
        instance.add_dynamic_partitions(ARD_CELLS, added)
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


def run_cells(cell_ids: list[str] | None = None, job_name: str = "datamaker_job",
              progress: Callable[[str], None] = print, bucket: str | None = None, one_run: bool = False) -> list[str]:
    """Run ``job_name`` once per cell partition (default: all registered), or in ``one_run`` over their
    range, over ``bucket`` (default: the configured one); returns the failed cells."""
    from imagesim_pipeline.definitions import defs
    from imagesim_pipeline.orchestration.partitions import ARD_CELLS

    instance = open_instance()
    known = instance.get_dynamic_partitions(ARD_CELLS)
    cells = list(cell_ids) if cell_ids else list(known)
    if not cells:
        raise ImagesimError(f"no cell is registered as a partition in the Dagster instance at {dagster_home()}: "
                            "run `imagesim discover` (it registers every delivered cell)")
    unknown = sorted(set(cells) - set(known))
    if unknown:
        raise ImagesimError("; ".join(_why_unregistered(cell, bucket) for cell in unknown))
    job = defs.resolve_job_def(job_name)
    _clear_orphans(instance, progress)
    if one_run:
        positions = sorted(known.index(cell) for cell in cells)
        span = known[positions[0]:positions[-1] + 1]
        if len(span) != len(set(cells)):
            raise ImagesimError(f"one run covers a contiguous range of registered cells, and the {len(cells)} "
                                "cells given are not one: name no cells to run them all")
        tags = {**process_tags(), "dagster/asset_partition_range_start": span[0],
                "dagster/asset_partition_range_end": span[-1]}
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, raise_on_error=False,
                                        run_config=scripted_run_config(bucket), tags=tags)
        return [] if _report(job_name, result, started, progress, f"{len(cells)} cells") else list(cells)
    failures = []
    for i, cell_id in enumerate(cells, 1):
        started = time.perf_counter()
        result = job.execute_in_process(partition_key=cell_id, instance=instance, raise_on_error=False,
                                        run_config=scripted_run_config(bucket), tags=process_tags())
        if not _report(f"[{i}/{len(cells)}] {cell_id}", result, started, progress):
            failures.append(cell_id)
    return failures


def run_job(job_name: str, progress: Callable[[str], None] = print, run_config: dict | None = None,
            bucket: str | None = None, assets: list[str] | None = None) -> bool:
    """Run an unpartitioned job once (``assets``: only those of it, e.g. ``training_dataset`` of
    ``trainer_job``) over ``bucket`` (default: the configured one); returns whether it succeeded."""
    from dagster import AssetKey

    from imagesim_pipeline.definitions import defs

    instance = open_instance()
    _clear_orphans(instance, progress)
    started = time.perf_counter()
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, raise_on_error=False, run_config=scripted_run_config(bucket, run_config),
        tags=process_tags(), asset_selection=[AssetKey(a) for a in assets] if assets else None)
    return _report(job_name if not assets else f"{job_name} ({', '.join(assets)})", result, started, progress)


def _report(what: str, result, started: float, progress: Callable[[str], None], scope: str = "") -> bool:
    """Print a finished run's outcome, its failed steps' messages and failed checks; whether it succeeded."""
    progress(f"  {what}{' over ' + scope if scope else ''}: {'ok' if result.success else 'FAILED'} in "
             f"{time.perf_counter() - started:.1f} s (run {result.run_id[:8]})")
    for event in result.all_events:
        if event.is_step_failure:
            progress(f"      {step_failure_message(event)}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                progress(f"      check {evaluation.check_name} did not pass ({evaluation.severity.value})")
    return result.success
