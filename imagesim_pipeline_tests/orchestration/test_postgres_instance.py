"""The production instance file (deploy/aws/dagster.yaml) against a real PostgreSQL server, and
``check_instance_storage``.

A throwaway PostgreSQL cluster (Debian's server binaries, installed with apt-get when missing) runs on a
free port of 127.0.0.1 for this module; no system cluster or service is touched. Over it, the real CLI
commands of a deployment run with the instance file copied unchanged: `imagesim discover` registers the
demo world's cells, `dagster job execute` runs ``datamaker_job`` for one cell (in process: the EcsRunLauncher
is configured but launches nothing, and no AWS call is made), and the runs, partitions and materializations
are read back through Dagster and straight from PostgreSQL.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline_tests.conftest import chip_cells, free_port, stop_process_group, wait_for_port, world_site

BIN = Path(sys.executable).parent
INSTANCE_FILE = PROJECT_ROOT / "deploy" / "aws" / "dagster.yaml"
CELL = "Z35-013133111131"  # a Kotka cell of the demo world
JOB = "datamaker_job"
ECS_TASK_DEFINITION = "imagesim-datamaker-test"
LOG_BUCKET = "imagesim-logs"
ECS_CLUSTER = "imagesim-test-cluster"


# --- a throwaway PostgreSQL server ------------------------------------------------------------------------


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    db: str
    user: str
    password: str
    socket_dir: str

    def env(self) -> dict[str, str]:
        """The instance file's variables for this server."""
        return {"DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_DB": self.db,
                "DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password}

    def connect(self):
        """A psycopg2 connection as the Dagster user, over TCP with its password."""
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, dbname=self.db, user=self.user,
                                password=self.password, connect_timeout=5)


def _pg_bin() -> Path | None:
    """The newest Debian PostgreSQL server binaries (or initdb on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _install_postgresql() -> None:
    """apt-get install Debian's postgresql (with sudo when not root); skips when that is impossible."""
    sudo: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo") or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode:
            pytest.skip("PostgreSQL's server binaries are missing and apt-get needs root: "
                        "sudo apt-get install -y postgresql")
        sudo = ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    if not shutil.which("apt-get"):
        pytest.skip("PostgreSQL's server binaries are missing and there is no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"apt-get install postgresql failed: {done.stderr.strip()[-500:]}")


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1:<free port> with a database and a password user; stopped
    by its process group at the end, its cluster deleted. As root the cluster belongs to `postgres`."""
    import psycopg2

    bindir = _pg_bin()
    if bindir is None:
        _install_postgresql()
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip("apt-get installed postgresql but no initdb was found under /usr/lib/postgresql")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="imagesim-pg-"))
    data, sockets = root / "data", root / "socket"
    sockets.mkdir()
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to own the test cluster")
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    proc = None
    try:
        subprocess.run([*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        port = free_port()
        log = open(root / "postgres.log", "wb")
        proc = subprocess.Popen([*as_user, bindir / "postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port),
                                 "-k", sockets, "-c", "fsync=off", "-c", "synchronous_commit=off",
                                 "-c", "full_page_writes=off", "-c", "max_connections=200"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_port(port, proc)
        server = PgServer("127.0.0.1", port, "dagster", "imagesim", "s3cret pass/word", str(sockets))
        admin = None
        for _ in range(50):  # the port opens a moment before the server takes connections
            try:
                admin = psycopg2.connect(host=str(sockets), port=port, dbname="postgres", user="postgres")
                break
            except psycopg2.OperationalError:
                time.sleep(0.1)
        assert admin is not None, (root / "postgres.log").read_text()
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE ROLE imagesim LOGIN PASSWORD %s", (server.password,))
            cur.execute("CREATE DATABASE dagster OWNER imagesim")
        admin.close()
        yield server
    finally:
        if proc is not None:
            stop_process_group(proc)
        shutil.rmtree(root, ignore_errors=True)


# --- the deployment's environment -------------------------------------------------------------------------


def _aws_home(parent: Path) -> Path:
    """An instance folder holding the production instance file, unchanged."""
    home = parent / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_FILE, home / "dagster.yaml")
    return home


def _deployment_env(server: PgServer, home: Path, base: dict[str, str] | None = None,
                    s3: str | None = None) -> dict[str, str]:
    """The variables the ECS task definition gives the containers, for ``server``. AWS requests go to ``s3``
    (a local S3-compatible server: step logs are uploaded there) or else to a closed local port."""
    env = dict(base if base is not None else os.environ)
    env.update(server.env())
    env.update({"DAGSTER_HOME": str(home), "IMAGESIM_ECS_DATAMAKER_TASK_DEFINITION": ECS_TASK_DEFINITION,
                "IMAGESIM_ECS_CLUSTER": ECS_CLUSTER, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": s3 or f"http://127.0.0.1:{free_port()}",
                "DAGSTER_COMPUTE_LOG_BUCKET": LOG_BUCKET, "DAGSTER_COMPUTE_LOG_PREFIX": "deliveries/ops/compute-logs"})
    env.pop("AWS_PROFILE", None)
    return env


@dataclass
class Deployment:
    env: dict[str, str]
    home: Path
    bucket: Path
    cells: list[str]
    discover: subprocess.CompletedProcess
    execute: subprocess.CompletedProcess
    execute_s: float


@pytest.fixture(scope="module")
def deployment(postgres, world, tmp_path_factory, s3_server) -> Deployment:
    """The demo world's cells registered with `imagesim discover`, then `dagster job execute` of datamaker_job
    for CELL, both with the production instance file over the test server."""
    from imagesim_pipeline.orchestration.deployment import check_instance_storage

    work = tmp_path_factory.mktemp("aws-instance")
    bucket, base = world_site(world[0], work)
    home = Path(base["DAGSTER_HOME"])  # a fresh instance folder: the production file replaces the embedded one
    shutil.copy(INSTANCE_FILE, home / "dagster.yaml")
    env = _deployment_env(postgres, home, base, s3=s3_server)
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=LOG_BUCKET)
    with pytest.MonkeyPatch.context() as mp:  # the instance file must work before anything runs on it
        for key, value in env.items():
            mp.setenv(key, value)
        check_instance_storage(home)
    assert CELL in world[1]
    discover = subprocess.run([BIN / "imagesim", "discover"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=300)
    assert discover.returncode == 0, discover.stdout + discover.stderr
    started = time.monotonic()
    execute = subprocess.run([BIN / "dagster", "job", "execute", "-m", "imagesim_pipeline.definitions", "-j", JOB,
                              "--tags", json.dumps({"dagster/partition": CELL})],
                             env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    return Deployment(env, home, bucket, sorted(world[1]), discover, execute, time.monotonic() - started)


@pytest.fixture
def instance(deployment, monkeypatch):
    """The deployment's instance, read through Dagster (the instance file's variables set here too)."""
    from dagster import DagsterInstance

    for key, value in deployment.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    inst = DagsterInstance.from_config(str(deployment.home))
    yield inst
    inst.dispose()


# --- the production instance file over PostgreSQL ---------------------------------------------------------


def test_the_instance_file_is_the_one_in_use(deployment, instance):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
    from moto import mock_aws

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    with mock_aws():  # the launcher looks its task definition up in ECS when it is built
        import boto3

        boto3.client("ecs").register_task_definition(
            family=ECS_TASK_DEFINITION, containerDefinitions=[{"name": "run", "image": "imagesim", "memory": 512}])
        launcher = instance.run_launcher
        assert isinstance(launcher, EcsRunLauncher)
        assert launcher.task_definition.endswith(f":task-definition/{ECS_TASK_DEFINITION}:1")
        assert launcher.run_task_kwargs["cluster"] == ECS_CLUSTER
        assert launcher.container_name == "run"


def test_discover_registers_the_cells_in_postgres(deployment, instance, postgres):
    assert "registered" in deployment.discover.stdout
    assert sorted(instance.get_dynamic_partitions("ard_cells")) == deployment.cells
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'ard_cells'")
        assert sorted(row[0] for row in cur.fetchall()) == deployment.cells
    # nothing went to SQLite (the folder holds compute logs only: dagster.yaml sets no compute_logs)
    assert not [p for p in deployment.home.rglob("*") if p.suffix in (".db", ".sqlite")]


def test_datamaker_job_runs_one_cell_with_its_runs_in_postgres(deployment, instance, postgres):
    from dagster import DagsterRunStatus

    output = deployment.execute.stdout + deployment.execute.stderr
    assert deployment.execute.returncode == 0, output[-4000:]
    assert "Could not connect to the endpoint" not in output  # no AWS request (they go to a closed port)
    runs = instance.get_runs()
    assert len(runs) == 1
    run = runs[0]
    assert (run.job_name, run.status, run.tags.get("dagster/partition")) == (JOB, DagsterRunStatus.SUCCESS, CELL)
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, pipeline_name, status, partition FROM runs")
        assert cur.fetchall() == [(run.run_id, JOB, "SUCCESS", CELL)]
        cur.execute("SELECT value FROM run_tags WHERE run_id = %s AND key = 'dagster/partition'", (run.run_id,))
        assert cur.fetchall() == [(CELL,)]
        cur.execute("SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s AND partition = %s "
                    "AND dagster_event_type = 'ASSET_MATERIALIZATION'", (run.run_id, CELL))
        materialized = {json.loads(row[0])[-1] for row in cur.fetchall()}  # AssetKey.to_string(): a JSON list
    assert materialized == {"ard_tile", "osm_data", "chips", "nodata_index", "chip_labels"}
    print(f"dagster job execute {JOB} {CELL}: {deployment.execute_s:.1f} s")


def test_the_cells_assets_are_materialized(deployment, instance):
    from dagster import AssetKey, AssetRecordsFilter

    assert deployment.execute.returncode == 0, deployment.execute.stderr[-4000:]
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("chips"),
                                                                 asset_partitions=[CELL]), limit=1).records
    assert records and records[0].event_log_entry.dagster_event.partition == CELL
    assert instance.get_latest_materialization_event(AssetKey("chips")).dagster_event.partition == CELL
    for asset in ("ard_tile", "osm_data", "chips", "nodata_index", "chip_labels"):
        assert instance.get_materialized_partitions(AssetKey(asset)) == {CELL}, asset


def test_the_bucket_has_the_cells_chips(deployment):
    from imagesim_pipeline.storage import open_bucket

    assert deployment.execute.returncode == 0, deployment.execute.stderr[-4000:]
    bucket = open_bucket(deployment.bucket)
    assert chip_cells(bucket) == [CELL]
    chips = [o for o in bucket.list(f"chips/{CELL[1:3]}/") if o.key.endswith(".jpg")]
    assert chips


def test_step_logs_are_uploaded_to_the_bucket(deployment, s3_server):
    import boto3

    assert deployment.execute.returncode == 0, deployment.execute.stderr[-4000:]
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=LOG_BUCKET).get("Contents", [])]
    assert keys and all(k.startswith("deliveries/ops/compute-logs/") for k in keys)
    # stdout and stderr of each of the job's five steps
    assert sum(k.endswith(".err") for k in keys) >= 5 and sum(k.endswith(".out") for k in keys) >= 5, keys


# --- check_instance_storage -------------------------------------------------------------------------------


def _storage_home(tmp_path: Path, scheme: str | None = "postgresql+psycopg2") -> Path:
    """An instance folder whose dagster.yaml holds the production storage block only (with ``scheme``)."""
    home = tmp_path / "home"
    home.mkdir()
    extra = f"\n      scheme: {scheme}" if scheme else ""
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_db:\n"
        "      hostname: {env: DAGSTER_PG_HOST}\n      port: {env: DAGSTER_PG_PORT}\n"
        "      db_name: {env: DAGSTER_PG_DB}\n      username: {env: DAGSTER_PG_USERNAME}\n"
        "      password: {env: DAGSTER_PG_PASSWORD}\n      params:\n        connect_timeout: 10" + extra + "\n")
    return home


def _set_env(monkeypatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_check_describes_the_running_server_with_the_production_file(postgres, tmp_path, monkeypatch):
    from imagesim_pipeline.orchestration.deployment import check_instance_storage

    home = _aws_home(tmp_path)
    _set_env(monkeypatch, _deployment_env(postgres, home))
    assert check_instance_storage(home) == f"PostgreSQL imagesim@127.0.0.1:{postgres.port}/dagster"
    assert check_instance_storage() == f"PostgreSQL imagesim@127.0.0.1:{postgres.port}/dagster"  # DAGSTER_HOME


def test_check_names_a_closed_port_within_the_timeout(postgres, tmp_path, monkeypatch):
    from imagesim_pipeline.orchestration.deployment import DeploymentError, check_instance_storage

    home = _storage_home(tmp_path)
    port = free_port()
    _set_env(monkeypatch, {**postgres.env(), "DAGSTER_PG_PORT": str(port)})
    started = time.monotonic()
    with pytest.raises(DeploymentError) as caught:
        check_instance_storage(home, timeout_s=3)
    assert time.monotonic() - started < 3 + 2
    message = str(caught.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}/dagster" in message and "Connection refused" in message
    assert "DAGSTER_PG_HOST/DAGSTER_PG_PORT" in message and "security group" in message


def test_check_gives_up_on_a_silent_server_after_the_timeout(postgres, tmp_path, monkeypatch):
    """A server that accepts TCP and never answers (like a dropped security group, which hangs)."""
    from imagesim_pipeline.orchestration.deployment import DeploymentError, check_instance_storage

    home = _storage_home(tmp_path)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        _set_env(monkeypatch, {**postgres.env(), "DAGSTER_PG_PORT": str(port)})
        started = time.monotonic()
        with pytest.raises(DeploymentError) as caught:
            check_instance_storage(home, timeout_s=2)
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 2 + 2, elapsed
    assert f"127.0.0.1:{port}/dagster" in str(caught.value) and "timeout expired" in str(caught.value)


def test_check_names_an_unset_variable_and_the_file(postgres, tmp_path, monkeypatch):
    from imagesim_pipeline.orchestration.deployment import DeploymentError, check_instance_storage

    home = _aws_home(tmp_path)
    _set_env(monkeypatch, _deployment_env(postgres, home))
    monkeypatch.delenv("DAGSTER_PG_HOST")
    monkeypatch.delenv("IMAGESIM_ECS_CLUSTER")
    with pytest.raises(DeploymentError) as caught:
        check_instance_storage(home)
    message = str(caught.value)
    assert str(home / "dagster.yaml") in message
    assert "DAGSTER_PG_HOST (storage.postgres.postgres_db.hostname)" in message
    assert "IMAGESIM_ECS_CLUSTER (run_launcher.config.run_task_kwargs.cluster)" in message


def test_check_names_the_password_variable_on_a_wrong_password(postgres, tmp_path, monkeypatch):
    from imagesim_pipeline.orchestration.deployment import DeploymentError, check_instance_storage

    home = _storage_home(tmp_path)
    _set_env(monkeypatch, {**postgres.env(), "DAGSTER_PG_PASSWORD": "wrong"})
    with pytest.raises(DeploymentError, match="password authentication failed.*DAGSTER_PG_PASSWORD"):
        check_instance_storage(home)


def test_check_names_a_driver_that_sqlalchemy_cannot_load(postgres, tmp_path, monkeypatch):
    from imagesim_pipeline.orchestration.deployment import DeploymentError, check_instance_storage

    home = _storage_home(tmp_path, scheme="postgresql+nosuchdriver")
    _set_env(monkeypatch, postgres.env())
    with pytest.raises(DeploymentError, match="postgresql\\+nosuchdriver.*scheme: postgresql\\+psycopg2"):
        check_instance_storage(home)


def test_check_describes_sqlite(tmp_path):
    from imagesim_pipeline.orchestration.deployment import check_instance_storage

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    assert check_instance_storage(home) == f"SQLite in {home.resolve()}"

