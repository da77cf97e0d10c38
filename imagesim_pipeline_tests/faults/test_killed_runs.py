"""Fault: `imagesim materialize` killed with kill -9. The killed runs end as failed and never block the queue:
the next scripted run clears them, and so does the daemon (its sensor) before it launches a queued run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from dagster import DagsterRunStatus, RunsFilter

from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline_tests.conftest import stop_process_group

from imagesim_pipeline_tests.faults.conftest import BIN, CELL


def _runs(instance, *statuses):
    return instance.get_runs(RunsFilter(statuses=list(statuses)))


def _kill_during_a_run(env, instance) -> str:
    """Start `imagesim materialize CELL`, kill -9 it once its run is STARTED; the run's id."""
    before = {r.run_id for r in instance.get_runs()}
    proc = subprocess.Popen([BIN / "imagesim", "materialize", CELL], env=env, cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = [r for r in _runs(instance, DagsterRunStatus.STARTED) if r.run_id not in before]
        if started:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return started[0].run_id
        time.sleep(0.2)
    stop_process_group(proc)
    raise AssertionError("the run never started")


def test_the_next_scripted_run_marks_a_killed_run_failed(site):
    env, instance = site
    killed = _kill_during_a_run(env, instance)
    assert instance.get_run_by_id(killed).status == DagsterRunStatus.STARTED  # left behind by kill -9
    run = subprocess.run([BIN / "imagesim", "materialize", CELL], env=env, cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "marked 1 run(s) failed whose process is gone" in run.stdout
    assert instance.get_run_by_id(killed).status == DagsterRunStatus.FAILURE
    failure = [e for e in instance.all_logs(killed) if e.dagster_event and e.dagster_event.event_type_value
               == "PIPELINE_FAILURE"]
    assert "is gone: it was killed or crashed" in failure[-1].dagster_event.message
    assert not _runs(instance, DagsterRunStatus.STARTED, DagsterRunStatus.STARTING)


def test_the_daemon_clears_killed_runs_and_runs_the_queued_one(site):
    env, instance = site
    killed = [_kill_during_a_run(env, instance) for _ in range(3)]  # more than max_concurrent_runs (2)
    daemon = subprocess.Popen([BIN / "dagster-daemon", "run", "-w", "workspace.yaml"], env=env, cwd=PROJECT_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        launch = subprocess.run([BIN / "dagster", "job", "launch", "-w", "workspace.yaml", "-j", "datamaker_job",
                                 "--tags", json.dumps({"dagster/partition": CELL})], env=env, cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=300)
        assert launch.returncode == 0, launch.stderr[-2000:]
        queued = [r for r in instance.get_runs() if r.run_id not in killed][0]
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            status = instance.get_run_by_id(queued.run_id).status
            if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
                break
            time.sleep(2)
        assert status == DagsterRunStatus.SUCCESS, status
        assert all(instance.get_run_by_id(r).status == DagsterRunStatus.FAILURE for r in killed)
    finally:
        stop_process_group(daemon)
    assert daemon.poll() is not None
