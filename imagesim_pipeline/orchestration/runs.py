"""Runs whose process died (kill -9, out of memory, a closed laptop) end as failed instead of holding the queue.

A run started by ``imagesim`` (``execute_in_process``) carries its host, pid and the process's
start time as tags; a run launched by the daemon through the default run launcher records its
worker's pid in the "Started process for run" engine event. A run still STARTED/CANCELING whose
process is gone from this host is reported failed, with a message that says what happened and
what to do, and its pool slots are freed. Runs of other hosts and of launchers with their own
health checks (ECS: Dagster's run monitoring) are left alone.

``fail_orphaned_runs`` runs at the start of every scripted run and in the ``orphaned_runs_sensor``
(every 30 s while the daemon runs), so a killed run never blocks the queue for long.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOST_TAG = "imagesim/host"
PID_TAG = "imagesim/pid"
START_TAG = "imagesim/pid_start"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Tags that let a later command tell whether this process still runs the run."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: _start_time(pid) or ""}


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    now = _start_time(pid) if started else None
    return not (started and now and now != started)


def _worker(instance, run) -> tuple[int, str | None] | None:
    """(pid, start time) of the process running ``run`` on this host, or None when unknown or elsewhere."""
    from dagster import DagsterEventType
    from dagster._core.launcher import DefaultRunLauncher

    tags = run.tags
    if PID_TAG in tags:
        if tags.get(HOST_TAG) != socket.gethostname():
            return None
        return int(tags[PID_TAG]), tags.get(START_TAG) or None
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return None
    pid = None
    for record in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        if event is not None and (event.message or "").startswith("Started process for run"):
            value = event.engine_event_data.metadata.get("pid")
            pid = int(value.value) if value is not None else pid
    return (pid, None) if pid else None


def fail_orphaned_runs(instance) -> list[str]:
    """Report every in-progress run whose process is gone as failed and free its slots; their ids."""
    from dagster import DagsterRunStatus, RunsFilter

    in_progress = [DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    failed = []
    for run in instance.get_runs(RunsFilter(statuses=in_progress)):
        worker = _worker(instance, run)
        if worker is None or _alive(*worker):
            continue
        partition = run.tags.get("dagster/partition")
        instance.report_run_failed(run, message=(
            f"The process running this run (pid {worker[0]} on {socket.gethostname()}) is gone: it was killed or "
            "crashed. imagesim marked the run failed so that it holds no slot. Every output is written atomically, "
            f"so nothing partial was published: run {run.job_name}"
            + (f" for {partition}" if partition else "") + " again to finish the work."))
        try:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        except NotImplementedError:
            pass
        failed.append(run.run_id)
    return failed


__all__ = ["HOST_TAG", "PID_TAG", "START_TAG", "fail_orphaned_runs", "process_tags"]
