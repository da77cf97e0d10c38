"""Benchmark: the search service over HTTP, next to the engine and the tiler measured in-process in the same run.

Search. A bucket of ``--cells`` level-12 cells of 1 024 zoom-17 chips each (default 1 024 cells:
1 048 576 chips), with embeddings from ``bench_index``'s generative model (320-d, clustered like the
SMLC's last hidden layer), random label probabilities, real chip ids and WGS84 outlines, written as
the pipeline writes them (one GeoParquet per cell) and indexed by ``build_similarity_index`` (HNSW
over float16 above 200 000 vectors). Then, for the same random sample of chip ids:

* the engine in this process: ``SearchEngine.by_chip(chip, k=10)``, one query at a time: p50/p99;
* ``imagesim serve`` on 127.0.0.1 (a separate process, one uvicorn worker):
  ``GET /api/search/chip/<id>?k=10`` from 1 client, then from ``--clients`` (8) concurrent clients
  with keep-alive connections, bounded by ``--requests`` and ``--seconds``: p50/p99 and requests/s.

Each query reads its chip's cell embeddings (the engine keeps the last 8 cells), as a click on a
random place of a large map does.

Tiles. Over a local bucket with ARD deliveries (``--tiles-bucket``, default the demo's
``data/bucket``): every web-mercator tile at zooms 15-17 meeting the deliveries (at most
``--tiles`` per zoom), read once to warm GDAL's caches, then again: warm p50/p95 through HTTP
(``GET /tiles/z/x/y.png``) and through ``ArdMosaic.tile`` in this process.

Usage: python benchmarks/bench_service.py [--cells 1024] [--workdir DIR (kept: a second run reuses
the bucket)] [--clients 8] [--requests 4000] [--seconds 60] [--tiles-bucket data/bucket]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import mercantile
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import CELL_ROWS, EmbeddingModel, make_corpus  # noqa: E402

from imagesim_pipeline.ard.grid import ArdCell  # noqa: E402
from imagesim_pipeline.embeddings.cell_embeddings import cell_table, write_cell_embeddings  # noqa: E402
from imagesim_pipeline.search.catalog import build_similarity_index, read_manifest  # noqa: E402
from imagesim_pipeline.search.engine import SearchEngine  # noqa: E402
from imagesim_pipeline.service.tiles import ArdMosaic  # noqa: E402
from imagesim_pipeline.settings import PROJECT_ROOT, bucket_uri  # noqa: E402
from imagesim_pipeline.storage import open_bucket  # noqa: E402

VERSION = "bench-service"
LABELS = [f"label{i}" for i in range(13)]
ROOT_CELL = ArdCell(35, "0131313")  # zoom 7: 4^5 level-12 cells below it


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_bucket(root: Path, cells: int, seed: int = 7) -> None:
    """Write the cells' embeddings and build the index (skipped when ``root`` already holds them)."""
    bucket = open_bucket(root)
    try:
        if read_manifest(bucket, VERSION).vectors == cells * CELL_ROWS:
            log(f"reusing the index of {cells * CELL_ROWS:,} chips in {root}")
            return
    except Exception:  # noqa: BLE001 - absent or partial: build it
        pass
    started = time.perf_counter()
    model = EmbeddingModel(320, 300, seed)
    x, _, _ = make_corpus(model, cells * CELL_ROWS, seed)
    rng = np.random.default_rng(seed)
    info = SimpleNamespace(name="smlc", version=VERSION, labels=LABELS, thresholds=[0.5] * len(LABELS))
    level12 = list(ROOT_CELL.iter_children(12))[:cells]
    for c, cell in enumerate(level12):
        chips = list(cell.iter_children(17))
        rows = [{"chip": f"{chip.id}_BENCH.jpg", "cell": cell.id, "catalog_id": "BENCH", "date": "2024-05-01",
                 "bytes": 12_000} for chip in chips]
        sl = slice(c * CELL_ROWS, (c + 1) * CELL_ROWS)
        probs = rng.random((CELL_ROWS, len(LABELS)), dtype=np.float32)
        write_cell_embeddings(bucket, VERSION, cell.id, cell_table(rows, x[sl], probs, info))
        if c % 64 == 63:
            log(f"  wrote {c + 1}/{cells} cells")
    del x
    log(f"embeddings written in {time.perf_counter() - started:.0f} s; building the index")
    build = build_similarity_index(bucket, VERSION, progress=log)
    log(f"index: {build.vectors:,} vectors, {build.description}, {build.seconds:.0f} s")


def percentiles(values: list[float], *qs: float) -> list[float]:
    return [float(np.percentile(values, q)) for q in qs]


class Server:
    """``imagesim serve`` on a free 127.0.0.1 port, stopped by its process group."""

    def __init__(self, bucket: Path, version: str = "") -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [str(Path(sys.executable).parent / "imagesim"), "serve", "--port", str(self.port),
                   "--bucket", str(bucket), "--log-level", "warning"] + (["--version", version] if version else [])
        self.proc = subprocess.Popen(command, cwd=PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if self.get("/api/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("imagesim serve did not answer within 300 s")

    def get(self, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if own:
            conn.close()
        return response.status, body

    def stop(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def http_load(server: Server, paths: list[str], clients: int, max_requests: int, max_seconds: float) -> dict:
    """Latencies and throughput of ``clients`` concurrent keep-alive clients over ``paths``."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        mine = []
        for i in counter:
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            status, _ = server.get(paths[i % len(paths)], conn)
            mine.append(time.perf_counter() - started)
            if status != 200:
                errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    p50, p99 = percentiles([s * 1000 for s in latencies], 50, 99)
    return {"clients": clients, "requests": len(latencies), "errors": errors[0], "seconds": round(wall, 1),
            "rps": round(len(latencies) / wall, 1), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}


def bench_search(args) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-service-"))
    build_bucket(workdir, args.cells)
    bucket = open_bucket(workdir)
    engine = SearchEngine(bucket, version=VERSION)
    rng = np.random.default_rng(1)
    sample = [engine.store.chips[i] for i in rng.choice(len(engine), args.queries, replace=False)]
    for chip in sample[:20]:
        engine.by_chip(chip, k=10)  # warm up FAISS and the page cache of a few files
    times = []
    for chip in sample:
        started = time.perf_counter()
        engine.by_chip(chip, k=10)
        times.append(time.perf_counter() - started)
    p50, p99 = percentiles([t * 1000 for t in times], 50, 99)
    result = {"vectors": len(engine), "index": engine.store.describe()["kind"],
              "engine": {"queries": len(times), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                         "qps_one_thread": round(len(times) / sum(times), 1)}}
    del engine
    server = Server(workdir, VERSION)
    try:
        paths = [f"/api/search/chip/{chip}?k=10" for chip in sample]
        for path in paths[:20]:
            assert server.get(path)[0] == 200
        result["http_1_client"] = http_load(server, paths, 1, min(args.requests, len(paths)), args.seconds)
        result[f"http_{args.clients}_clients"] = http_load(server, paths, args.clients, args.requests, args.seconds)
    finally:
        server.stop()
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def bench_tiles(args) -> dict:
    root = Path(args.tiles_bucket)
    mosaic = ArdMosaic(open_bucket(root))
    tiles: list[mercantile.Tile] = []
    for zoom in (15, 16, 17):
        found = {t for a in mosaic.assets() for t in mercantile.tiles(*a.bounds, zooms=zoom)}
        tiles += sorted(found, key=lambda t: (t.x, t.y))[: args.tiles]
    ok = []
    for t in tiles:  # cold pass: warms GDAL's block cache; tiles with no data are left out
        try:
            mosaic.tile(t.z, t.x, t.y)
            ok.append(t)
        except Exception:  # noqa: BLE001 - TileError: outside the data
            pass
    in_process = []
    for t in ok:
        started = time.perf_counter()
        mosaic.tile(t.z, t.x, t.y)
        in_process.append(time.perf_counter() - started)
    server = Server(root)
    try:
        paths = [f"/tiles/{t.z}/{t.x}/{t.y}.png" for t in ok]
        for path in paths:
            server.get(path)  # the server's own cold pass
        over_http = []
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for path in paths:
            started = time.perf_counter()
            status, _ = server.get(path, conn)
            over_http.append(time.perf_counter() - started)
            assert status == 200, path
        conn.close()
    finally:
        server.stop()
    ip50, ip95 = percentiles([s * 1000 for s in in_process], 50, 95)
    h50, h95 = percentiles([s * 1000 for s in over_http], 50, 95)
    return {"tiles": len(ok), "zooms": "15-17", "mosaic": {"p50_ms": round(ip50, 1), "p95_ms": round(ip95, 1)},
            "http": {"p50_ms": round(h50, 1), "p95_ms": round(h95, 1)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=1024, help="level-12 cells of 1 024 chips (default 1024)")
    parser.add_argument("--workdir", help="keep the generated bucket here (reused by a later run)")
    parser.add_argument("--queries", type=int, default=1000, help="distinct chip ids queried (default 1000)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000, help="at most this many requests per load")
    parser.add_argument("--seconds", type=float, default=60, help="at most this long per load")
    parser.add_argument("--tiles-bucket", default=bucket_uri(), help="a local bucket with ARD deliveries")
    parser.add_argument("--tiles", type=int, default=100, help="at most this many tiles per zoom")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args()
    results = {"machine": f"{os.cpu_count()} CPUs", "date": date.today().isoformat()}
    if not args.skip_search:
        results["search"] = bench_search(args)
        s = results["search"]
        log(f"search by chip id, k=10, {s['vectors']:,} vectors ({s['index']}):")
        log(f"  engine in-process   p50 {s['engine']['p50_ms']:7.2f} ms  p99 {s['engine']['p99_ms']:7.2f} ms  "
            f"{s['engine']['qps_one_thread']:7.1f} q/s (one thread)")
        for key in [k for k in s if k.startswith("http_")]:
            h = s[key]
            log(f"  HTTP {h['clients']} client(s)     p50 {h['p50_ms']:7.2f} ms  p99 {h['p99_ms']:7.2f} ms  "
                f"{h['rps']:7.1f} req/s  ({h['requests']} requests, {h['errors']} errors, {h['seconds']} s)")
    if Path(args.tiles_bucket).is_dir():
        results["tiles"] = t = bench_tiles(args)
        log(f"warm tiles, {t['tiles']} tiles at zooms {t['zooms']} over {args.tiles_bucket}:")
        log(f"  ArdMosaic.tile in-process  p50 {t['mosaic']['p50_ms']:6.1f} ms  p95 {t['mosaic']['p95_ms']:6.1f} ms")
        log(f"  HTTP GET /tiles/z/x/y.png  p50 {t['http']['p50_ms']:6.1f} ms  p95 {t['http']['p95_ms']:6.1f} ms")
    else:
        log(f"no local bucket at {args.tiles_bucket}: tiles not measured (run `make demo` first)")
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
