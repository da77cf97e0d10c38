"""The pgvector engine for real: a local PostgreSQL 18 + pgvector 0.8 server, the demo world's embeddings."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from imagesim_pipeline.search.engine import Filters, SearchEngine
from imagesim_pipeline.search.local_postgres import LocalPostgres
from imagesim_pipeline.search.pgvector_db import (
    PgParams,
    VectorEngineError,
    connect,
    drop_index,
    read_manifest,
    sync_index,
)
from imagesim_pipeline.search.pgvector_store import PgvectorStore
from imagesim_pipeline.search.stores import FaissStore, has_index, open_store
from imagesim_pipeline.storage import layout, open_bucket
from imagesim_pipeline_tests.conftest import (
    free_port,
    stop_process_group,
    wait_for_port,
)


@pytest.fixture(scope="module")
def pg_index(demo_index, local_pg):
    """The demo model's index in both engines: (bucket, version, faiss engine, dsn)."""
    root, version = demo_index
    bucket = open_bucket(root)
    build = sync_index(bucket, version, dsn=local_pg.dsn)
    assert build.mode == "built" and build.vectors == len(FaissStore(bucket, version))
    return bucket, version, SearchEngine(bucket, version=version), local_pg.dsn


def _exact(faiss_engine: SearchEngine, chip: str, filters: Filters, k: int) -> list[str]:
    """The exact answer: every indexed chip passing ``filters``, best first, one per place, the query's place out."""
    store = faiss_engine.store
    q = faiss_engine.vector_of_chip(chip)
    q = q / np.linalg.norm(q)
    vecs = np.stack([store.index.reconstruct(i) for i in range(len(store))])
    scores = vecs @ q
    allowed = store.mask(filters) if filters.active() else np.ones(len(store), bool)
    seen = {store.places[store.row_of[chip]]}
    out = []
    for i in np.argsort(-scores):
        if allowed[i] and store.places[i] not in seen:
            seen.add(store.places[i])
            out.append(store.chips[i])
            if len(out) == k:
                break
    return out


@pytest.mark.parametrize("exact_below", [20_000, 0], ids=["exact-path", "iterative-hnsw"])
def test_filtered_search_matches_exact_search(pg_index, exact_below):
    bucket, version, faiss_engine, dsn = pg_index
    store = PgvectorStore(read_manifest(version, connect(dsn)), dsn, PgParams(filter_exact_below=exact_below))
    engine = SearchEngine(bucket, version=version, store=store)
    fs = faiss_engine.store
    w, s, e, n = np.median(fs.bounds, axis=0)
    label = faiss_engine.labels[int(np.argmax((fs.probs >= faiss_engine.thresholds).sum(0)))]
    cases = [Filters(), Filters(bbox=(float(w) - 0.3, float(s) - 0.15, float(w) + 0.3, float(s) + 0.15)),
             Filters(labels=(label,)), Filters(since=sorted(set(fs.dates.tolist()))[-1]),
             Filters(catalog_ids=(str(fs.catalog_ids[-1]),), labels=(label,))]
    overlap = total = 0
    for chip in fs.sample(8, seed=3):
        for f in cases:
            got = [h.chip for h in engine.by_chip(chip, k=10, filters=f)]
            want = _exact(faiss_engine, chip, f, 10)
            assert len(got) == len(want), (chip, f)  # never too few under a selective filter
            allowed = set(fs.chips[fs.mask(f)]) if f.active() else set(fs.chips)
            assert set(got) <= allowed
            overlap += len(set(got) & set(want))
            total += len(want)
    # halfvec (float16) against float32 reorders near ties only
    assert overlap / total >= 0.95


def test_store_answers_like_the_faiss_store(pg_index):
    bucket, version, faiss_engine, dsn = pg_index
    pg = SearchEngine(bucket, version=version, store=PgvectorStore.open(version, dsn))
    chip = faiss_engine.store.chips[5]
    assert len(pg) == len(faiss_engine)
    got, want = pg.describe(chip)["labels"], faiss_engine.describe(chip)["labels"]
    assert [(name, on) for name, _, on in got] == [(name, on) for name, _, on in want]
    assert [p for _, p, _ in got] == pytest.approx([p for _, p, _ in want], abs=1e-6)
    assert np.allclose(pg.vector_of_chip(chip), faiss_engine.vector_of_chip(chip) /
                       np.linalg.norm(faiss_engine.vector_of_chip(chip)), atol=2e-3)
    ext, ext_f = pg.store.extent(), faiss_engine.store.extent()
    assert ext.catalog_ids == ext_f.catalog_ids and ext.first == ext_f.first and ext.last == ext_f.last
    assert np.allclose(ext.bounds, ext_f.bounds)
    box = (ext.bounds[0], ext.bounds[1], (ext.bounds[0] + ext.bounds[2]) / 2, (ext.bounds[1] + ext.bounds[3]) / 2)
    items, total = pg.places_in(box, 5)
    items_f, total_f = faiss_engine.places_in(box, 10_000)
    assert total == total_f and len(items) == 5 and {i.chip for i in items} <= {i.chip for i in items_f}
    assert pg.finds_itself(30) == (30, 1.0)
    assert "NOPE" in pg.why_empty(Filters(catalog_ids=("NOPE",)))


def test_adding_replacing_and_removing_cells(demo_index, local_pg, tmp_path):
    root, version = demo_index
    bucket = open_bucket(tmp_path / "bucket")
    source = open_bucket(root)
    for obj in source.list(layout.embeddings_prefix(version)):
        bucket.write_bytes(obj.key, source.read_bytes(obj.key))
    cells = sorted(o.key for o in bucket.list(layout.embeddings_prefix(version)))
    held_out = cells[-1]
    held_bytes = bucket.read_bytes(held_out)
    bucket.delete(held_out)
    other = "v-pgtest"  # its own table: the session's index of the demo version stays as it is
    for key in cells[:-1]:
        bucket.write_bytes(key.replace(version, other), bucket.read_bytes(key))
    dsn = local_pg.dsn
    try:
        first = sync_index(bucket, other, dsn=dsn)
        assert first.mode == "built" and first.cells == len(cells) - 1
        assert sync_index(bucket, other, dsn=dsn).mode == "unchanged"
        # a new cell arrives: only its rows are added, under a new build id
        bucket.write_bytes(held_out.replace(version, other), held_bytes)
        added = sync_index(bucket, other, dsn=dsn)
        held_rows = pq.read_table(io.BytesIO(held_bytes)).num_rows
        assert added.mode == "updated" and added.added == held_rows
        assert added.vectors == first.vectors + held_rows and added.build != first.build
        # a cell re-encoded with one chip fewer: its rows are replaced
        key = cells[0].replace(version, other)
        table = pq.read_table(io.BytesIO(bucket.read_bytes(key)))
        dropped = table.column("chip")[0].as_py()
        kept = table.slice(1)
        buffer = io.BytesIO()
        pq.write_table(kept, buffer)
        bucket.write_bytes(key, buffer.getvalue())
        replaced = sync_index(bucket, other, dsn=dsn)
        assert replaced.vectors == added.vectors - 1 and replaced.added == kept.num_rows
        store = PgvectorStore.open(other, dsn)
        assert store.item(dropped) is None and store.item(kept.column("chip")[0].as_py()) is not None
        # a cell removed from the bucket leaves the index
        bucket.delete(key)
        removed = sync_index(bucket, other, dsn=dsn)
        assert removed.vectors == replaced.vectors - kept.num_rows
        assert key.rsplit("/", 1)[1][:-len(".parquet")] not in read_manifest(other, connect(dsn)).cells
        # versions never mix: the demo version's table is untouched
        assert len(PgvectorStore.open(version, dsn)) == len(FaissStore(source, version))
    finally:
        drop_index(other, dsn)


def test_the_setting_chooses_the_engine(pg_index, monkeypatch):
    bucket, version, _, dsn = pg_index
    monkeypatch.setenv("IMAGESIM_VECTOR_ENGINE", "pgvector")
    monkeypatch.setenv("IMAGESIM_PGVECTOR_DSN", dsn)
    assert isinstance(open_store(bucket, version), PgvectorStore) and has_index(bucket, version)
    assert not has_index(bucket, "v-never-indexed")
    monkeypatch.setenv("IMAGESIM_PGVECTOR_DSN", "postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(VectorEngineError, match="cannot connect to the vector database"):
        open_store(bucket, version)
    monkeypatch.setenv("IMAGESIM_VECTOR_ENGINE", "faiss")
    assert isinstance(open_store(bucket, version), FaissStore)


def test_two_service_processes_share_one_index(pg_index, tmp_path):
    bucket, version, faiss_engine, dsn = pg_index
    env = {**os.environ, "IMAGESIM_VECTOR_ENGINE": "pgvector", "IMAGESIM_PGVECTOR_DSN": dsn}
    # the services read serving.json and chips from the bucket, vectors only from PostgreSQL: a bucket without
    # index/ proves it
    served = tmp_path / "bucket"
    shutil.copytree(bucket.root, served, ignore=shutil.ignore_patterns("index", "embeddings"))
    servers, ports = [], []
    try:
        for i in range(2):
            port = free_port()
            log = open(tmp_path / f"serve{i}.log", "w")
            servers.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "imagesim"), "serve", "--port", str(port), "--bucket",
                 str(served), "--version", version], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
            ports.append(port)
        for port, server in zip(ports, servers):
            wait_for_port(port, server, timeout=120)
        chip = faiss_engine.store.chips[7]
        answers = []
        for port in ports:
            health = requests.get(f"http://127.0.0.1:{port}/api/health", timeout=30).json()
            assert health["index_engine"] == "pgvector" and health["index_vectors"] == len(faiss_engine)
            body = requests.get(f"http://127.0.0.1:{port}/api/search/chip/{chip}", params={"k": 10},
                                timeout=60).json()
            answers.append([r["chip"] for r in body["hits"]])
        assert answers[0] == answers[1] and len(answers[0]) == 10
        assert set(answers[0]) & {h.chip for h in faiss_engine.by_chip(chip, k=10)}
    finally:
        for server in servers:
            stop_process_group(server)
    assert all(s.poll() is not None for s in servers)


def test_a_missing_dsn_says_what_to_set(monkeypatch):
    monkeypatch.delenv("IMAGESIM_PGVECTOR_DSN", raising=False)
    with pytest.raises(VectorEngineError, match="IMAGESIM_PGVECTOR_DSN is not set"):
        connect()


def test_engine_commands(pg_index, tmp_path):
    bucket, version, _, dsn = pg_index
    imagesim = str(Path(sys.executable).parent / "imagesim")
    env = {**os.environ, "IMAGESIM_VECTOR_ENGINE": "pgvector", "IMAGESIM_PGVECTOR_DSN": dsn}
    status = subprocess.run([imagesim, "engine", "status", "--bucket", str(bucket.root)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "pgvector 0.8" in status.stdout and version in status.stdout and "postgres:***@" in status.stdout
    broken = {**env, "IMAGESIM_PGVECTOR_DSN": "postgresql://nobody@127.0.0.1:1/none"}
    failed = subprocess.run([imagesim, "engine", "status", "--bucket", str(bucket.root)], env=broken,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "cannot connect to the vector database" in failed.stderr
    # a local server of its own, started and stopped by the CLI (the folder must be reachable by its user)
    root = Path(tempfile.mkdtemp(prefix="imagesim-engine-cli-"))
    try:
        started = subprocess.run([imagesim, "engine", "start", "--dir", str(root)], capture_output=True, text=True,
                                 timeout=300)
        assert started.returncode == 0, started.stderr
        server = LocalPostgres.running(root)
        assert server is not None and f"IMAGESIM_PGVECTOR_DSN={server.dsn}" in started.stdout
        stopped = subprocess.run([imagesim, "engine", "stop", "--dir", str(root)], capture_output=True, text=True,
                                 timeout=120)
        assert stopped.returncode == 0 and LocalPostgres.running(root) is None
    finally:
        leftover = LocalPostgres.running(root)
        if leftover is not None:
            leftover.stop()
        shutil.rmtree(root, ignore_errors=True)
