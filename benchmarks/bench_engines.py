"""Benchmark: vector engines for search past one machine, on the same corpus and queries.

Corpus and queries: ``bench_index.py``'s generated chip embeddings (cells of 1024 rows on a square
grid, places near each other alike), width ``--dim`` (368, today's model). Each row also gets what
the product filters on: a WGS84 box (its cell's place on a 0.01° x 0.005° grid, 32 x 32 chips a
cell), predicted labels (13; each cluster has its own label probabilities, so labels follow
content) and an acquisition date (12 monthly dates). Filters combine bbox, label and date at
about 1 %, 10 % and 50 % selectivity (the combination nearest each target; the actual share is
printed). Ground truth: exact top-10 by inner product over the allowed float32 rows (numpy).

Engines (each through the project's own code where the product uses it):

* ``faiss``: the embedded default, ``hnsw_fp16`` (``search.index``), filters as allow-masks;
* ``faiss-rabitq``: the quantised kind ``ivf_rabitq`` (``search.quantised``): 1-bit codes in RAM,
  shortlist re-ranked from float16 on disk;
* ``pgvector``: PostgreSQL 18 + pgvector 0.8 (``search.pgvector_db``/``pgvector_store``: the product's table,
  COPY, float32 rows, HNSW over their float16 cast with a float32 re-rank, SQL filters, iterative
  scans), a local server started here and stopped
  by its process id;
* ``pgvector-bq``: the same table with pgvector's own quantisation: an HNSW index over
  ``binary_quantize(embedding)`` (1 bit per dimension) and an exact re-rank of 500 candidates
  (unfiltered queries only);
* ``lancedb``: LanceDB 0.40 in a local folder (the same files work on S3 with stateless
  readers), ``IVF_HNSW_SQ`` with pre-filtering (``where(..., prefilter=True)``) and scalar
  indexes on the filter columns.

Measured: build seconds (load + index), bytes per vector (FAISS: RAM; pgvector: table + its
indexes, and the vector index alone; LanceDB: the folder), recall@10 and single-query latency p50 /
p99 unfiltered and at each selectivity, adding one cell (1024 new vectors) and replacing one cell's
vectors, each as the product would do it (FAISS: extend or rebuild, then serialise the whole
file; pgvector: one transaction; LanceDB: add, or delete + add).

Usage: python benchmarks/bench_engines.py [--size 100000] [--queries 200] [--dim 368]
       [--engines faiss,faiss-rabitq,pgvector,pgvector-bq,lancedb] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import CELL_ROWS, EmbeddingModel, log, make_corpus, make_queries  # noqa: E402

from imagesim_pipeline.search.engine import Filters  # noqa: E402
from imagesim_pipeline.search.index import IndexParams, build_index, describe, extend_index, search, to_bytes  # noqa: E402

K = 10
LABELS = [f"label{j}" for j in range(13)]
DATES = [date(2023, 1, 15) + timedelta(days=30 * i) for i in range(12)]
CELL_W, CELL_H = 0.01, 0.005
TARGETS = (0.01, 0.10, 0.50)


# --------------------------------------------------------------------------- metadata and filters

class Corpus:
    """Vectors plus what the product filters on."""

    def __init__(self, n: int, dim: int, seed: int) -> None:
        model = EmbeddingModel(dim, 300)
        clusters = np.empty(n, np.int64)
        self.x, self.cell, self.side = make_corpus(model, n, seed, clusters=clusters)
        rng = np.random.default_rng(seed + 1)
        p = rng.beta(0.6, 0.9, (model.clusters, len(LABELS)))
        self.probs = np.clip(p[clusters] + rng.normal(0, 0.15, (n, len(LABELS))), 0, 1).astype(np.float32)
        self.day = rng.integers(0, len(DATES), n)
        pos = np.arange(n) % CELL_ROWS
        cx, cy = self.cell % self.side, self.cell // self.side
        x0 = 24.0 + cx * CELL_W + (pos % 32) * CELL_W / 32
        y0 = 60.0 + cy * CELL_H + (pos // 32) * CELL_H / 32
        self.box = np.stack([x0, y0, x0 + CELL_W / 32, y0 + CELL_H / 32], 1)

    def mask(self, f: Filters) -> np.ndarray:
        keep = np.ones(len(self.x), bool)
        if f.bbox:
            w, s, e, n = f.bbox
            b = self.box
            keep &= (b[:, 0] <= e) & (b[:, 2] >= w) & (b[:, 1] <= n) & (b[:, 3] >= s)
        for label in f.labels:
            keep &= self.probs[:, LABELS.index(label)] >= 0.5
        if f.since:
            keep &= np.asarray(DATES)[self.day] >= f.since
        if f.until:
            keep &= np.asarray(DATES)[self.day] <= f.until
        return keep

    def filters(self, seed: int) -> list[tuple[float, Filters, float]]:
        """For each target share, the bbox + label + date filter nearest it: (target, filters, actual share)."""
        rng = np.random.default_rng(seed)
        out = []
        for target in TARGETS:
            best = None
            for _ in range(300):
                frac = rng.uniform(0.05, 1.0)
                b = max(1, round(self.side * math.sqrt(frac)))
                gx, gy = rng.integers(0, self.side - b + 1, 2)
                # edges mid-chip: PostgreSQL's box overlap tolerates 1e-6, exact comparisons do not
                inset_x, inset_y = CELL_W / 64, CELL_H / 64
                bbox = (24.0 + gx * CELL_W + inset_x, 60.0 + gy * CELL_H + inset_y,
                        24.0 + (gx + b) * CELL_W - inset_x, 60.0 + (gy + b) * CELL_H - inset_y)
                first = int(rng.integers(0, len(DATES)))
                last = int(rng.integers(first, len(DATES)))
                f = Filters(bbox=bbox, labels=(LABELS[int(rng.integers(0, len(LABELS)))],),
                            since=DATES[first], until=DATES[last])
                share = float(self.mask(f).mean())
                if best is None or (abs(math.log(max(share, 1e-6) / target))
                                    < abs(math.log(max(best[1], 1e-6) / target))):
                    best = (f, share)
            out.append((target, best[0], best[1]))
        return out


def truth(x: np.ndarray, queries: np.ndarray, mask: np.ndarray | None) -> list[np.ndarray]:
    rows = np.arange(len(x)) if mask is None else np.flatnonzero(mask)
    scores = queries @ x[rows].T
    top = np.argsort(-scores, axis=1)[:, :K]
    return [rows[t] for t in top]


def recall(found: list[list[int]], expected: list[np.ndarray]) -> float:
    hits = sum(len(set(f) & set(e.tolist())) for f, e in zip(found, expected))
    return hits / max(1, sum(len(e) for e in expected))


def timed_queries(run, queries: np.ndarray) -> tuple[list[list[int]], float, float]:
    """(ids per query, p50 ms, p99 ms), one query at a time after two warm-up calls."""
    run(queries[0])
    run(queries[1 % len(queries)])
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(list(run(q)))
        times.append((time.perf_counter() - t) * 1000)
    return found, float(np.percentile(times, 50)), float(np.percentile(times, 99))


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- engines

class FaissEngine:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = "faiss" if kind == "hnsw_fp16" else "faiss-rabitq"
        self._mask: tuple = (None, None)

    def build(self, c: Corpus) -> None:
        self.c = c
        self.index = build_index(c.x, IndexParams(kind=self.kind))

    def size(self) -> dict:
        d = describe(self.index)
        out = {"bytes_per_vector": d["bytes_per_vector"]}
        if "disk_bytes_per_vector" in d:
            out["disk_bytes_per_vector"] = d["disk_bytes_per_vector"]
        return out

    def query(self, q: np.ndarray, f: Filters | None) -> np.ndarray:
        if f is not None and self._mask[0] != f:  # the store keeps the last filter's mask too
            self._mask = (f, self.c.mask(f))
        mask = self._mask[1] if f else None
        ids = search(self.index, q[None], K, allowed=mask)[1][0]
        return ids[ids >= 0]

    def _serialise(self) -> None:
        if self.kind == "ivf_rabitq":
            self.index.codes_bytes()
            self.index.vectors_bytes()
        else:
            to_bytes(self.index)

    def add_cell(self, x: np.ndarray) -> float:
        t = time.perf_counter()
        extend_index(self.index, x)
        self._serialise()  # the product writes the whole file again
        return time.perf_counter() - t

    def replace_cell(self, x: np.ndarray) -> float:
        t = time.perf_counter()  # a changed cell: the product rebuilds the index over every vector
        whole = np.concatenate([self.c.x, x])
        self.index = build_index(whole, IndexParams(kind=self.kind))
        self._serialise()
        return time.perf_counter() - t


class PgvectorEngine:
    name = "pgvector"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _rows(self, c: Corpus, rows: np.ndarray, cell: str | None = None):
        for i in rows:
            yield (str(i), str(i), cell or str(c.cell[i]), "CAT", DATES[c.day[i]], tuple(c.box[i]), b"",
                   c.probs[i], np.flatnonzero(c.probs[i] >= 0.5).tolist(), c.x[i])

    def build(self, c: Corpus) -> None:
        from imagesim_pipeline.search import pgvector_db as pg
        from imagesim_pipeline.search.catalog import IndexManifest
        from imagesim_pipeline.search.pgvector_store import PgvectorStore

        self.c = c
        conn = pg.connect(self.dsn)
        pg.ensure_schema(conn)
        self.table = pg.table_name("bench")
        conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        pg._create_table(conn, self.table, c.x.shape[1])
        pg.copy_rows(conn, self.table, self._rows(c, np.arange(len(c.x))))
        pg._create_hnsw(conn, self.table, pg.PgParams(), c.x.shape[1])
        manifest = IndexManifest(version="bench", labels=LABELS, thresholds=[0.5] * len(LABELS), params={},
                                 index={"engine": "pgvector", "dim": c.x.shape[1]}, vectors=len(c.x), cells={},
                                 built=time.time())
        manifest.vectors = len(c.x)
        pg._commit(conn, manifest)
        conn.execute(f"ANALYZE {self.table}")
        conn.commit()
        self.conn = conn
        self.store = PgvectorStore(manifest, self.dsn)

    def size(self) -> dict:
        total, vec = self.conn.execute(f"SELECT pg_total_relation_size('{self.table}'), "
                                       f"pg_relation_size('{self.table}_hnsw')").fetchone()
        self.conn.rollback()
        n = len(self.c.x)
        return {"bytes_per_vector": round(total / n, 1), "index_bytes_per_vector": round(vec / n, 1)}

    def query(self, q: np.ndarray, f: Filters | None) -> list[int]:
        return [int(it.chip) for _, it in self.store.nearest(q, K, f or Filters(), frozenset())]

    def _cell(self, x: np.ndarray, cell: str, delete: bool) -> float:
        from imagesim_pipeline.search import pgvector_db as pg

        c = self.c
        t = time.perf_counter()
        with self.conn.transaction():
            if delete:
                self.conn.execute(f"DELETE FROM {self.table} WHERE cell = %s", (cell,))
            rows = ((f"new{cell}-{i}", f"new{cell}-{i}", cell, "CAT", DATES[0], (24, 60, 24.001, 60.001), b"",
                     c.probs[0], [], v) for i, v in enumerate(x))
            pg.copy_rows(self.conn, self.table, rows)
        return time.perf_counter() - t

    def add_cell(self, x: np.ndarray) -> float:
        return self._cell(x, "added", delete=False)

    def replace_cell(self, x: np.ndarray) -> float:
        return self._cell(x, str(self.c.cell[0]), delete=True)


class PgvectorBqEngine(PgvectorEngine):
    """pgvector's binary quantisation: HNSW over 1-bit codes, exact re-rank of a shortlist."""

    name = "pgvector-bq"
    shortlist = 500

    def build(self, c: Corpus) -> None:
        super().build(c)
        d = c.x.shape[1]
        self.d = d
        self.conn.execute(f"DROP INDEX IF EXISTS {self.table}_hnsw")
        self.conn.execute("SET maintenance_work_mem = '1GB'")
        self.conn.execute(f"CREATE INDEX {self.table}_bq ON {self.table} USING hnsw "
                          f"((binary_quantize(embedding)::bit({d})) bit_hamming_ops)")
        self.conn.commit()
        self.conn.autocommit = True
        self.conn.execute(f"SET hnsw.ef_search = {self.shortlist}")

    def size(self) -> dict:
        total, vec = self.conn.execute(f"SELECT pg_total_relation_size('{self.table}'), "
                                       f"pg_relation_size('{self.table}_bq')").fetchone()
        n = len(self.c.x)
        return {"bytes_per_vector": round(total / n, 1), "index_bytes_per_vector": round(vec / n, 1)}

    def query(self, q: np.ndarray, f: Filters | None) -> list[int]:
        if f is not None:
            return []
        rows = self.conn.execute(
            f"SELECT chip FROM (SELECT chip, embedding FROM {self.table} ORDER BY "
            f"binary_quantize(embedding)::bit({self.d}) <~> binary_quantize(%s::vector) LIMIT {self.shortlist}) s "
            "ORDER BY embedding <#> %s LIMIT %s", (q, q, K)).fetchall()
        return [int(r[0]) for r in rows]


class LanceEngine:
    name = "lancedb"

    def __init__(self, root: Path) -> None:
        self.root = root / "lance"

    def _table(self, c: Corpus, rows: np.ndarray, cell: int | None = None):
        import pyarrow as pa

        x = c.x[rows]
        cols = {"id": pa.array(rows.astype(np.int64)), "cell": pa.array(c.cell[rows] if cell is None
                                                                       else np.full(len(rows), cell)),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
                "minx": c.box[rows, 0], "miny": c.box[rows, 1], "maxx": c.box[rows, 2], "maxy": c.box[rows, 3],
                "day": pa.array([DATES[d] for d in c.day[rows]], pa.date32())}
        for j in range(len(LABELS)):
            cols[f"l{j}"] = pa.array(c.probs[rows, j] >= 0.5)
        return pa.table(cols)

    def build(self, c: Corpus) -> None:
        import lancedb
        from lancedb.index import Bitmap, BTree, IvfHnswSq

        self.c = c
        shutil.rmtree(self.root, ignore_errors=True)
        self.db = lancedb.connect(str(self.root))
        self.tbl = self.db.create_table("chips", self._table(c, np.arange(len(c.x))))
        self.tbl.create_index("vector", config=IvfHnswSq(distance_type="dot",
                                                         num_partitions=max(1, len(c.x) // 50_000)))
        for col in ("minx", "miny", "maxx", "maxy", "day", "cell"):
            self.tbl.create_index(col, config=BTree())
        for j in range(len(LABELS)):
            self.tbl.create_index(f"l{j}", config=Bitmap())

    def size(self) -> dict:
        return {"bytes_per_vector": round(folder_bytes(self.root) / len(self.c.x), 1)}

    def query(self, q: np.ndarray, f: Filters | None) -> list[int]:
        s = self.tbl.search(q).select(["id", "_distance"]).limit(K).ef(100)
        if f is not None:
            w, so, e, n = f.bbox
            where = (f"minx <= {e} AND maxx >= {w} AND miny <= {n} AND maxy >= {so} AND "
                     f"l{LABELS.index(f.labels[0])} = true AND day >= date '{f.since}' AND day <= date '{f.until}'")
            s = s.where(where, prefilter=True)
        return s.to_arrow().column("id").to_pylist()

    def add_cell(self, x: np.ndarray) -> float:
        t = time.perf_counter()
        self.tbl.add(self._table(self.c, np.arange(len(x)), cell=-1))
        return time.perf_counter() - t

    def replace_cell(self, x: np.ndarray) -> float:
        t = time.perf_counter()
        self.tbl.delete(f"cell = {int(self.c.cell[0])}")
        self.tbl.add(self._table(self.c, np.arange(len(x)), cell=int(self.c.cell[0])))
        return time.perf_counter() - t


# --------------------------------------------------------------------------- run

def run_engine(engine, c: Corpus, queries: np.ndarray, filters, truths) -> dict:
    log(f"{engine.name}: building over {len(c.x):,} vectors")
    t = time.perf_counter()
    engine.build(c)
    row = {"engine": engine.name, "n": len(c.x), "build_s": round(time.perf_counter() - t, 1), **engine.size()}
    found, p50, p99 = timed_queries(lambda q: engine.query(q, None), queries)
    row.update(recall=round(recall(found, truths[None]), 4), p50_ms=round(p50, 2), p99_ms=round(p99, 2))
    row["filtered"] = []
    if engine.name != "pgvector-bq":
        for target, f, share in filters:
            found, p50, p99 = timed_queries(lambda q, f=f: engine.query(q, f), queries)
            short = sum(len(x) < min(K, len(e)) for x, e in zip(found, truths[target]))
            row["filtered"].append({"target": target, "share": round(share, 4),
                                    "recall": round(recall(found, truths[target]), 4),
                                    "p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "short_answers": short})
    new = c.x[:CELL_ROWS] * 0.999 + 0.001  # a cell's worth of fresh vectors (normalised enough for timing)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    row["add_cell_s"] = round(engine.add_cell(new), 3)
    row["replace_cell_s"] = round(engine.replace_cell(new), 3)
    log(f"{engine.name}: {row}")
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\n{'engine':<14}{'n':>9}{'build s':>9}{'B/vec':>9}{'recall':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'add cell s':>11}{'repl. cell s':>13}")
    for r in rows:
        print(f"{r['engine']:<14}{r['n']:>9,}{r['build_s']:>9}{r['bytes_per_vector']:>9}{r['recall']:>8}"
              f"{r['p50_ms']:>8}{r['p99_ms']:>8}{r['add_cell_s']:>11}{r['replace_cell_s']:>13}")
    print(f"\n{'filtered (bbox+label+date)':<28}{'share':>8}{'recall':>8}{'p50 ms':>8}{'p99 ms':>8}{'short':>7}")
    for r in rows:
        for f in r["filtered"]:
            print(f"{r['engine'] + ' @' + format(f['target'], '.0%'):<28}{f['share']:>8}{f['recall']:>8}"
                  f"{f['p50_ms']:>8}{f['p99_ms']:>8}{f['short_answers']:>7}")


def run(size: int, dim: int, n_queries: int, names: list[str]) -> list[dict]:
    """One row per engine in ``names`` over a corpus of ``size`` (see the module's doc)."""
    c = Corpus(size, dim, seed=3)
    queries = make_queries(EmbeddingModel(dim, 300), n_queries, seed=11)
    filters = c.filters(seed=5)
    truths = {None: truth(c.x, queries, None)}
    for target, f, share in filters:
        truths[target] = truth(c.x, queries, c.mask(f))
        log(f"filter ~{target:.0%}: actual {share:.2%} of the corpus")
    root = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    server = None
    rows = []
    try:
        if any(n.startswith("pgvector") for n in names):
            from imagesim_pipeline.search.local_postgres import LocalPostgres

            os.chmod(root, 0o755)
            server = LocalPostgres.start(root / "pg")
        for name in names:
            engine = {"faiss": lambda: FaissEngine("hnsw_fp16"), "faiss-rabitq": lambda: FaissEngine("ivf_rabitq"),
                      "pgvector": lambda: PgvectorEngine(server.dsn),
                      "pgvector-bq": lambda: PgvectorBqEngine(server.dsn),
                      "lancedb": lambda: LanceEngine(root)}[name]()
            rows.append(run_engine(engine, c, queries, filters, truths))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dim", type=int, default=368)
    ap.add_argument("--engines", default="faiss,faiss-rabitq,pgvector,pgvector-bq,lancedb")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = run(args.size, args.dim, args.queries, args.engines.split(","))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "dim": args.dim, "queries": args.queries,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
