"""Bad input at the orchestration level gives one clear line each: an unknown partition, a GPU asked for where
there is none, a port in use, a missing AWS setting, an unreachable PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, materialize

from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline_tests.conftest import free_port

BIN = Path(sys.executable).parent


def _imagesim(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "imagesim", *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and errors and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return "\n".join(errors)


def test_an_unknown_partition_says_how_cells_are_registered(dagster_home, tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "IMAGESIM_BUCKET": str(tmp_path)}
    message = _one_line(_imagesim("materialize", "Z33-120020223133", env=env))
    assert "Z33-120020223133 has no delivery under" in message and "then run `imagesim discover`" in message


def test_a_gpu_asked_for_where_there_is_none_fails_the_step_at_once(dagster_home, tmp_path):
    from imagesim_pipeline.orchestration.compute import ComputeResource
    from imagesim_pipeline.orchestration.model_assets import smlc_model
    from imagesim_pipeline.orchestration.resources import BucketResource

    started = time.monotonic()
    result = materialize([smlc_model], instance=DagsterInstance.get(), raise_on_error=False,
                         resources={"bucket": BucketResource(uri=str(tmp_path)), "compute": ComputeResource()},
                         run_config={"ops": {"smlc_model": {"config": {"accelerator": "gpu"}}}})
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    assert "asks for a GPU but this machine has none" in failure.user_failure_data.description
    assert time.monotonic() - started < 60  # no retries: bad input fails once


def test_a_ui_port_in_use_is_one_line(dagster_home):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        message = _one_line(_imagesim("ui", "--port", str(port), env={**os.environ,
                                                                       "DAGSTER_HOME": str(dagster_home)}))
    assert f"cannot listen on 127.0.0.1:{port}" in message and "another --port" in message


def test_the_aws_deployment_names_its_missing_settings(dagster_home, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"DAGSTER_HOME": str(dagster_home), "IMAGESIM_DEPLOYMENT": "aws", "IMAGESIM_BUCKET": str(tmp_path)})
    proc = _imagesim("check", env=env)
    message = _one_line(proc)
    assert "deployment: aws (executor: ecs)" in proc.stdout
    for setting in ("IMAGESIM_BUCKET must be an s3://", "IMAGESIM_ECS_CLUSTER", "AWS_REGION"):
        assert setting in message


def test_an_unreachable_postgresql_is_one_line_in_seconds(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "deploy/aws/dagster.yaml").read_text())
    port = free_port()  # nothing listens there
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port),
           "DAGSTER_PG_DB": "dagster", "DAGSTER_PG_USERNAME": "imagesim", "DAGSTER_PG_PASSWORD": "x",
           "IMAGESIM_ECS_DATAMAKER_TASK_DEFINITION": "imagesim-datamaker", "IMAGESIM_ECS_CLUSTER": "imagesim",
           "DAGSTER_COMPUTE_LOG_BUCKET": "b", "DAGSTER_COMPUTE_LOG_PREFIX": "p", "AWS_DEFAULT_REGION": "us-east-1"}
    started = time.monotonic()
    message = _one_line(_imagesim("backfill", "--zone", "33", env=env))
    assert time.monotonic() - started < 30  # Dagster alone retries several times, then a long traceback
    assert f"127.0.0.1:{port}" in message and "DAGSTER_PG_HOST" in message


def test_dagster_job_execute_for_an_unregistered_cell_names_it(dagster_home, tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "IMAGESIM_BUCKET": str(tmp_path)}
    proc = subprocess.run([BIN / "dagster", "job", "execute", "-m", "imagesim_pipeline.definitions", "-j",
                           "datamaker_job", "--tags", '{"dagster/partition": "Z33-120020223133"}'], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert ("'Z33-120020223133' is not a registered cell (a partition of ard_cells): register delivered cells "
            "with `imagesim discover`") in proc.stdout + proc.stderr
    runs = DagsterInstance.get().get_runs()
    assert len(runs) == 1 and runs[0].status.value == "FAILURE"
