"""Scripted use of the Dagster instance: register partitions and run jobs (for the CLI and CI)."""

from __future__ import annotations

import time
from typing import Callable

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


def run_cells(cell_ids: list[str] | None = None, job_name: str = "cell_job",
              progress: Callable[[str], None] = print) -> list[str]:
    """Run ``job_name`` once per cell partition (default: all registered); returns the failed cells."""
    from imagesim_pipeline.definitions import defs
    from imagesim_pipeline.orchestration.partitions import ard_cells

    instance = _instance()
    known = instance.get_dynamic_partitions(ard_cells.name)
    cells = list(cell_ids) if cell_ids else list(known)
    unknown = sorted(set(cells) - set(known))
    if unknown:
        raise SystemExit(f"error: not registered as partitions: {', '.join(unknown)}. Run `imagesim discover` first.")
    job = defs.resolve_job_def(job_name)
    failures = []
    for i, cell_id in enumerate(cells, 1):
        started = time.perf_counter()
        result = job.execute_in_process(partition_key=cell_id, instance=instance, raise_on_error=False,
                                        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        status = "ok" if result.success else "FAILED"
        progress(f"  [{i}/{len(cells)}] {cell_id}: {status} in {time.perf_counter() - started:.1f} s (run {result.run_id[:8]})")
        if not result.success:
            failures.append(cell_id)
            for event in result.all_events:
                if event.is_step_failure:
                    progress(f"      {event.step_failure_data.error.message.strip().splitlines()[0]}")
    return failures


def run_job(job_name: str, progress: Callable[[str], None] = print, run_config: dict | None = None) -> bool:
    """Run an unpartitioned job once (e.g. ``dataset_job``); returns whether it succeeded."""
    from imagesim_pipeline.definitions import defs

    instance = _instance()
    started = time.perf_counter()
    config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}, **(run_config or {})}
    result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, raise_on_error=False,
                                                                run_config=config)
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
