"""The similarity index in PostgreSQL with pgvector (``IMAGESIM_VECTOR_ENGINE=pgvector``).

Layout (created on first write; the role needs CREATE on the database, and the ``vector``
extension >= 0.8 must be installable, as on RDS/Aurora PostgreSQL 16+):

* ``imagesim_indexes``: one row per model version, its :class:`~imagesim_pipeline.search.catalog.IndexManifest`
  as JSON (build id, labels, thresholds, the embeddings file of every cell it holds);
* ``imagesim_chips_<version>``: one row per indexed chip: ``chip``, ``place``, ``cell``,
  ``catalog_id``, ``date``, ``box`` (the WGS84 bounds, GiST-indexed), ``wkb`` (the outline),
  ``probs`` (label probabilities), ``labels`` (the predicted labels' numbers, GIN-indexed) and
  ``embedding`` (``vector``, float32; the HNSW index is over its float16 cast, ``halfvec``, half
  the size, inner product on unit vectors = cosine).

Writes (:func:`sync_index`) bring a version's table up to date with ``embeddings/<version>/`` in the
bucket one cell at a time: a cell's rows are deleted and copied in again and the manifest row
updated in the same transaction, so a reader sees a cell either wholly old or wholly new, and the
manifest always describes what the table holds. A first build loads every cell, then builds the HNSW
index, then commits once. Versions never mix: each has its own table.

Reads (:class:`PgvectorStore`) hold no index state (each thread keeps one connection per database,
shared by every store, so the store a service opens for each new index build reuses it): filters are
SQL conditions, so any number of search processes share one database. Nearest neighbours: the HNSW
index (over the float16 cast) gives a shortlist that the float32 vectors re-rank. Filtered ones
follow the FAISS store's rule: when few chips pass (at most ``filter_exact_below``, a count that
stops there) they are scored exactly (read through the filter indexes); otherwise the HNSW index is
walked with pgvector's iterative scan (``hnsw.iterative_scan``, 0.8), which keeps walking until
enough rows pass instead of returning too few, as a plain post-filtered walk does. The conditions
are then written so that no filter index matches them (``IS TRUE``): PostgreSQL estimates combined
conditions far too low (61 rows for 9 995 at 100 000) and would otherwise read every passing row and
sort them (110 ms against 6 ms for the walk, one EXPLAIN ANALYZE on the benchmark's corpus).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.search.stores import Extent, Item

if TYPE_CHECKING:
    import psycopg

    from imagesim_pipeline.search.catalog import IndexBuild, IndexManifest
    from imagesim_pipeline.search.engine import Filters
    from imagesim_pipeline.storage import Bucket

MANIFESTS = "imagesim_indexes"
Progress = Callable[[str], None]


class VectorEngineError(ImagesimError):
    """The vector database cannot be reached or is not set up; the message says what to do."""


@dataclass(frozen=True)
class PgParams:
    """HNSW build and search settings (defaults measured in ``benchmarks/bench_engines.py``)."""

    m: int = 32
    ef_construction: int = 200  # at 80 the graph's recall varied 0.85-0.97 from build to build (ef_search 100)
    ef_search: int = 100
    shortlist: int = 100  # HNSW candidates (float16) re-ranked with the float32 vectors
    max_scan_tuples: int = 40_000  # iterative scan: most tuples one filtered query may visit
    filter_exact_below: int = 2_000  # exact scoring reads ~10 µs of heap per row; the HNSW walk ~6 ms at 10 %
    build_memory: str = "1GB"  # maintenance_work_mem while the HNSW index is built


def table_name(version: str) -> str:
    """The table of a model version (PostgreSQL identifiers: lower case letters, digits, underscores)."""
    return "imagesim_chips_" + re.sub(r"[^a-z0-9_]", "_", version.lower())


def connect(dsn: str = "") -> psycopg.Connection:
    """A connection to the vector database with pgvector's types registered (autocommit off)."""
    import psycopg
    from pgvector.psycopg import register_vector

    from imagesim_pipeline.settings import settings

    dsn = dsn or settings().pgvector_dsn
    if not dsn:
        raise VectorEngineError("IMAGESIM_VECTOR_ENGINE is pgvector but IMAGESIM_PGVECTOR_DSN is not set: set it to "
                                "the database's connection string (postgresql://user@host:5432/db)")
    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise VectorEngineError(f"cannot connect to the vector database ({_safe(dsn)}): "
                                f"{str(exc).strip().splitlines()[0]}") from None
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:  # the extension is not created yet: the first write creates it
        conn.rollback()
    return conn


def _safe(dsn: str) -> str:
    """``dsn`` without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


def ensure_schema(conn: psycopg.Connection) -> None:
    """The extension and the manifests table (idempotent)."""
    from pgvector.psycopg import register_vector

    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if version is None:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if tuple(int(p) for p in version[0].split(".")[:2]) < (0, 8):
        raise VectorEngineError(f"pgvector {version[0]} is too old: iterative index scans need 0.8 or newer "
                                "(ALTER EXTENSION vector UPDATE)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {MANIFESTS} (version text PRIMARY KEY, manifest jsonb NOT NULL)")
    conn.commit()
    register_vector(conn)


def describe_database(dsn: str = "") -> str:
    """Where the database is, its PostgreSQL and pgvector versions and the indexed model versions;
    ``VectorEngineError`` when it cannot serve (unreachable, pgvector missing or older than 0.8)."""
    import psycopg

    from imagesim_pipeline.settings import settings

    dsn = dsn or settings().pgvector_dsn
    conn = connect(dsn)
    try:
        server = conn.execute("SHOW server_version").fetchone()[0]
        ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        available = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
                                 ).fetchone()
        try:
            versions = [r[0] for r in conn.execute(f"SELECT version FROM {MANIFESTS} ORDER BY 1").fetchall()]
        except psycopg.errors.UndefinedTable:
            conn.rollback()
            versions = []
    finally:
        conn.close()
    vector = ext[0] if ext else (available[0] if available else None)
    if vector is None:
        raise VectorEngineError(f"the vector database at {_safe(dsn)} has no pgvector extension: install pgvector "
                                "0.8 or newer (RDS and Aurora PostgreSQL 16+ ship it)")
    if tuple(int(p) for p in vector.split(".")[:2]) < (0, 8):
        raise VectorEngineError(f"the vector database at {_safe(dsn)} has pgvector {vector}: iterative index scans "
                                "need 0.8 or newer (ALTER EXTENSION vector UPDATE)")
    state = "created" if ext else "installable, created on the first write"
    return (f"{_safe(dsn)} (PostgreSQL {server}, pgvector {vector} {state}; indexed model versions: "
            f"{', '.join(versions) or 'none yet'})")


def read_manifest(version: str, conn: psycopg.Connection | None = None) -> IndexManifest:
    """The manifest of ``version``'s index in the database; ``IndexNotFoundError`` when it has none."""
    import psycopg

    from imagesim_pipeline.search.catalog import IndexManifest, IndexNotFoundError

    own = conn is None
    conn = conn or connect()
    try:
        row = conn.execute(f"SELECT manifest FROM {MANIFESTS} WHERE version = %s", (version,)).fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    finally:
        if own:
            conn.close()
        else:
            conn.rollback()
    if row is None:
        raise IndexNotFoundError(f"model {version} has no similarity index in the vector database: materialize "
                                 "chip_embeddings and similarity_index (encoder_job) with IMAGESIM_VECTOR_ENGINE="
                                 "pgvector")
    return IndexManifest.model_validate(row[0])


def _write_manifest(conn: psycopg.Connection, manifest: IndexManifest) -> None:
    conn.execute(f"INSERT INTO {MANIFESTS} (version, manifest) VALUES (%s, %s) ON CONFLICT (version) "
                 "DO UPDATE SET manifest = EXCLUDED.manifest", (manifest.version, manifest.model_dump_json()))


# --------------------------------------------------------------------------- writing

def _create_table(conn: psycopg.Connection, table: str, dim: int) -> None:
    conn.execute(f"""CREATE TABLE {table} (
        id bigserial PRIMARY KEY, chip text NOT NULL UNIQUE, place text NOT NULL, cell text NOT NULL,
        catalog_id text NOT NULL, date date NOT NULL, box box NOT NULL, wkb bytea NOT NULL,
        probs real[] NOT NULL, labels smallint[] NOT NULL, embedding vector({dim}) NOT NULL)""")
    for column, method in (("cell", "btree"), ("place", "btree"), ("date", "btree"), ("catalog_id", "btree"),
                           ("box", "gist"), ("labels", "gin")):
        conn.execute(f"CREATE INDEX ON {table} USING {method} ({column})")


def _create_hnsw(conn: psycopg.Connection, table: str, params: PgParams, dim: int) -> None:
    # a graph that fits in maintenance_work_mem builds several times faster (PostgreSQL's default is 64 MB)
    conn.execute(f"SET LOCAL maintenance_work_mem = '{params.build_memory}'")
    conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw "
                 f"((embedding::halfvec({int(dim)})) halfvec_ip_ops) "
                 f"WITH (m = {int(params.m)}, ef_construction = {int(params.ef_construction)})")


def copy_rows(conn: psycopg.Connection, table: str, rows: Iterator[tuple]) -> int:
    """COPY ``(chip, place, cell, catalog_id, date, box, wkb, probs, labels, embedding)`` rows; the count."""
    from pgvector import Vector

    n = 0
    columns = "chip, place, cell, catalog_id, date, box, wkb, probs, labels, embedding"
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for chip, place, cell, catalog, day, box, wkb, probs, labels, vec in rows:
            copy.write_row((chip, place, cell, catalog, day, "({},{}),({},{})".format(*box), wkb, list(probs),
                            labels, Vector(vec)))
            n += 1
    return n


def _cell_rows(table: Any, thresholds: np.ndarray) -> Iterator[tuple]:
    """The rows of one cell's embeddings table (``embeddings.cell_embeddings``), embeddings L2-normalised."""
    import shapely

    from imagesim_pipeline.embeddings.cell_embeddings import vectors
    from imagesim_pipeline.search.index import normalise

    emb = normalise(vectors(table))
    probs = vectors(table, "probs")
    wkbs = table.column("geometry").to_pylist()
    bounds = shapely.bounds(shapely.from_wkb(wkbs)) if wkbs else np.zeros((0, 4))
    cols = [table.column(c).to_pylist() for c in ("chip", "place", "cell", "catalog_id", "date")]
    for i, (chip, place, cell, catalog, day) in enumerate(zip(*cols)):
        yield (chip, place, cell, catalog, day, tuple(bounds[i]), wkbs[i], probs[i],
               np.flatnonzero(probs[i] >= thresholds).tolist(), emb[i])


def sync_index(bucket: Bucket, version: str, params: PgParams = PgParams(), progress: Progress = lambda m: None,
               warn: Progress | None = None, dsn: str = "") -> IndexBuild:
    """Bring ``version``'s table up to date with its cells' embeddings in the bucket (see the module's doc)."""
    from imagesim_pipeline.embeddings.cell_embeddings import EmbeddingsError, read_cell_embeddings, table_meta
    from imagesim_pipeline.search.catalog import IndexBuild, IndexManifest, IndexNotFoundError, embeddings_listing

    started = time.perf_counter()
    warn = warn or progress
    listing = embeddings_listing(bucket, version)
    if not listing:
        raise IndexNotFoundError(f"no embeddings under {bucket.url(f'embeddings/{version}/')}: materialize "
                                 "chip_embeddings for some cells first")
    table = table_name(version)
    conn = connect(dsn)
    try:
        ensure_schema(conn)
        # one writer per version at a time (released with the connection); readers are never blocked
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (table,))
        conn.commit()
        try:
            old = read_manifest(version, conn)
        except IndexNotFoundError:
            old = None
        held = dict(old.cells) if old else {}
        changed = sorted(c for c, entry in listing.items() if held.get(c) != entry)
        removed = sorted(set(held) - set(listing))
        if old is not None and not changed and not removed:
            return IndexBuild(version, "unchanged", old.vectors, len(held), 0, time.perf_counter() - started,
                              old.index, old.build)
        first = old is None
        manifest = old
        added, left_out = 0, []
        if first:
            conn.execute(f"DROP TABLE IF EXISTS {table}")  # a first build that never committed its manifest
        for n, cell in enumerate(changed + removed):
            try:
                cell_table = read_cell_embeddings(bucket, version, cell) if cell in listing else None
            except EmbeddingsError as exc:
                warn(f"{exc}; {cell} is left out of the index until its embeddings are rebuilt")
                left_out.append(cell)
                continue
            if manifest is None:
                if cell_table is None:
                    continue
                meta = table_meta(cell_table)
                dim = cell_table.column("embedding").type.list_size
                _create_table(conn, table, dim)
                manifest = IndexManifest(version=version, model=meta.get("model"), labels=meta["labels"],
                                         thresholds=meta["thresholds"], params=vars(params),
                                         index={"engine": "pgvector", "kind": "hnsw_halfvec_rerank", "dim": dim,
                                                "table": table}, vectors=0, cells={}, built=time.time())
            deleted = conn.execute(f"DELETE FROM {table} WHERE cell = %s", (cell,)).rowcount
            copied = 0
            if cell_table is not None:
                copied = copy_rows(conn, table, _cell_rows(cell_table, np.asarray(manifest.thresholds, np.float32)))
                manifest.cells[cell] = listing[cell]
            else:
                manifest.cells.pop(cell, None)
            added += copied
            manifest.vectors += copied - max(deleted, 0)
            if not first:  # an update commits cell by cell, its manifest with it
                _commit(conn, manifest)
            if (n + 1) % 50 == 0:
                progress(f"index {version}: {n + 1}/{len(changed) + len(removed)} cells written")
        if manifest is None:
            raise IndexNotFoundError(f"no readable embeddings under {bucket.url(f'embeddings/{version}/')} "
                                     f"({len(left_out)} unreadable): materialize chip_embeddings again")
        if first:
            progress(f"index {version}: building the HNSW index over {added} vectors")
            _create_hnsw(conn, table, params, int(manifest.index["dim"]))
            _commit(conn, manifest)
        conn.execute(f"ANALYZE {table}")
        conn.commit()
    finally:
        conn.close()
    return IndexBuild(version, "built" if first else "updated", manifest.vectors, len(manifest.cells), added,
                      time.perf_counter() - started, manifest.index, manifest.build, tuple(left_out))


def _commit(conn: psycopg.Connection, manifest: IndexManifest) -> None:
    """The manifest row (a new build id) in the transaction that changed the table, then commit."""
    manifest.index = {**manifest.index, "n": manifest.vectors}
    manifest.build = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    manifest.built = time.time()
    _write_manifest(conn, manifest)
    conn.commit()


def drop_index(version: str, dsn: str = "") -> None:
    """Remove ``version``'s table and manifest row."""
    conn = connect(dsn)
    try:
        conn.execute(f"DROP TABLE IF EXISTS {table_name(version)}")
        conn.execute(f"DELETE FROM {MANIFESTS} WHERE version = %s", (version,))
        conn.commit()
    finally:
        conn.close()


# --------------------------------------------------------------------------- reading

_ITEM = "chip, place, date, catalog_id, wkb, probs"
_threads = threading.local()  # each thread's connection per database, shared by every store of the process


def _thread_connection(dsn: str) -> psycopg.Connection:
    """This thread's autocommit connection to ``dsn`` (opened on first use, again after a failure)."""
    conns = _threads.__dict__.setdefault("conns", {})
    conn = conns.get(dsn)
    if conn is None or conn.closed:
        conn = conns[dsn] = connect(dsn)
        conn.autocommit = True
    return conn


def _failed(dsn: str, exc: Exception) -> VectorEngineError:
    """Forget this thread's broken connection (the next call reconnects); the error to raise."""
    conn = _threads.__dict__.get("conns", {}).pop(dsn, None)
    if conn is not None:
        conn.close()
    return VectorEngineError(f"the vector database failed: {str(exc).strip().splitlines()[0]}")


def _item(row: tuple) -> Item:
    chip, place, day, catalog, wkb, probs = row[:6]
    return Item(chip, place, day, catalog, bytes(wkb), np.asarray(probs, np.float32))


class PgvectorStore:
    """One version's chips in the vector database; a connection per thread, no index state."""

    engine = "pgvector"

    def __init__(self, manifest: IndexManifest, dsn: str = "", params: PgParams = PgParams()) -> None:
        self.version = manifest.version
        self.build = manifest.build
        self.labels = list(manifest.labels)
        self.thresholds = np.asarray(manifest.thresholds, np.float32)
        self.table = table_name(self.version)
        self.dim = int(manifest.index.get("dim", 0))
        self._n = manifest.vectors
        self._index = manifest.index
        self.params = params
        if not dsn:
            from imagesim_pipeline.settings import settings

            dsn = settings().pgvector_dsn
        self._dsn = dsn

    @classmethod
    def open(cls, version: str, dsn: str = "") -> PgvectorStore:
        conn = connect(dsn)
        try:
            return cls(read_manifest(version, conn), dsn)
        finally:
            conn.close()

    def _conn(self) -> psycopg.Connection:
        return _thread_connection(self._dsn)

    def _rows(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        import psycopg

        try:
            return self._conn().execute(sql, args).fetchall()
        except psycopg.OperationalError as exc:  # a dropped connection: the next call reconnects
            raise _failed(self._dsn, exc) from None

    def __len__(self) -> int:
        return self._n

    def item(self, chip: str) -> Item | None:
        rows = self._rows(f"SELECT {_ITEM} FROM {self.table} WHERE chip = %s", (chip,))
        return _item(rows[0]) if rows else None

    def embedding(self, chip: str) -> np.ndarray | None:
        rows = self._rows(f"SELECT embedding FROM {self.table} WHERE chip = %s", (chip,))
        return rows[0][0].to_numpy().astype(np.float32) if rows else None

    def _where(self, filters: Filters, excluded_places: frozenset[str] = frozenset(),
               opaque: bool = False) -> tuple[str, list]:
        """SQL conditions and their arguments. ``opaque`` wraps each in ``IS TRUE``, which no index matches: the
        planner then cannot read the filter indexes first and walks the HNSW index, testing each row."""
        clauses, args = ["TRUE"], []
        if filters.bbox:
            clauses.append("box && box(point(%s, %s), point(%s, %s))")
            args += list(filters.bbox)
        if filters.labels:
            clauses.append("labels @> %s::smallint[]")
            args.append([self.labels.index(label) for label in filters.labels])
        if filters.since:
            clauses.append("date >= %s")
            args.append(filters.since)
        if filters.until:
            clauses.append("date <= %s")
            args.append(filters.until)
        if filters.catalog_ids:
            clauses.append("catalog_id = ANY(%s)")
            args.append(list(filters.catalog_ids))
        if excluded_places:
            clauses.append("place <> ALL(%s)")
            args.append(sorted(excluded_places))
        if opaque:
            clauses = [f"({c}) IS TRUE" for c in clauses]
        return " AND ".join(clauses), args

    def nearest(self, query: np.ndarray, k: int, filters: Filters,
                excluded_places: frozenset[str] = frozenset()) -> list[tuple[float, Item]]:
        import psycopg
        from pgvector import HalfVector

        # Few rows pass: read them through the filter indexes and score them all exactly. Many: walk the HNSW
        # index (float16) with an iterative scan, which goes on until enough rows pass, then re-rank that
        # shortlist with the float32 vectors (float16 alone cannot order neighbours closer than ~1e-3).
        # PostgreSQL's row estimates for combined conditions are far off, so a count decides, not the planner.
        exact = filters.active() and self.count(filters, self.params.filter_exact_below + 1) \
            <= self.params.filter_exact_below
        where, args = self._where(filters, excluded_places, opaque=not exact)
        q = np.asarray(query, np.float32)
        if exact:
            sql = (f"SELECT {_ITEM}, (embedding <#> %s) AS d FROM {self.table} WHERE {where} ORDER BY d LIMIT %s")
            params: tuple = (q, *args, k)
        else:
            sql = (f"SELECT * FROM (SELECT {_ITEM}, (embedding <#> %s) AS d FROM {self.table} WHERE {where} "
                   f"ORDER BY embedding::halfvec({self.dim}) <#> %s LIMIT %s) shortlist ORDER BY d LIMIT %s")
            params = (q, *args, HalfVector(q), max(k, self.params.shortlist), k)
        conn = self._conn()
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(int(self.params.ef_search), min(k, 1000))}")
                conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
                conn.execute(f"SET LOCAL hnsw.max_scan_tuples = {int(self.params.max_scan_tuples)}")
                if not exact:
                    conn.execute("SET LOCAL enable_seqscan = off")
                rows = conn.execute(sql, params).fetchall()
        except psycopg.OperationalError as exc:
            raise _failed(self._dsn, exc) from None
        if not exact and filters.active() and len(rows) < min(k, self.count(filters, k)):
            # the walk hit max_scan_tuples before k rows passed: score the passing rows exactly instead
            where, args = self._where(filters, excluded_places)
            rows = self._rows(f"SELECT {_ITEM}, (embedding <#> %s) AS d FROM {self.table} WHERE {where} "
                              "ORDER BY d LIMIT %s", (q, *args, k))
        return [(-float(r[6]), _item(r)) for r in rows]

    def count(self, filters: Filters, at_most: int | None = None) -> int:
        """How many chips pass ``filters``; counting stops at ``at_most`` when given (a broad filter then costs
        little: the count decides between the exact and the HNSW path)."""
        if not filters.active():
            return self._n if at_most is None else min(self._n, at_most)
        where, args = self._where(filters)
        limit = "" if at_most is None else f" LIMIT {int(at_most)}"
        return int(self._rows(f"SELECT count(*) FROM (SELECT 1 FROM {self.table} WHERE {where}{limit}) passing",
                              args)[0][0])

    def newest_per_place(self, bbox: tuple[float, float, float, float], limit: int) -> tuple[list[Item], int]:
        box = "box && box(point(%s, %s), point(%s, %s))"
        total = int(self._rows(f"SELECT count(DISTINCT place) FROM {self.table} WHERE {box}", bbox)[0][0])
        rows = self._rows(f"SELECT DISTINCT ON (place) {_ITEM} FROM {self.table} WHERE {box} "
                          "ORDER BY place, date DESC LIMIT %s", (*bbox, limit))
        return [_item(r) for r in rows], total

    def sample(self, n: int, seed: int = 0) -> list[str]:
        rows = self._rows(f"SELECT chip FROM {self.table} ORDER BY md5(chip || %s) LIMIT %s", (str(seed), n))
        return [r[0] for r in rows]

    def extent(self) -> Extent:
        row = self._rows(f"SELECT min((box[1])[0]), min((box[1])[1]), max((box[0])[0]), max((box[0])[1]), "
                         f"min(date), max(date) FROM {self.table}")[0]
        catalogs = [r[0] for r in self._rows(f"SELECT DISTINCT catalog_id FROM {self.table} ORDER BY 1")]
        bounds = None if row[0] is None else (float(row[0]), float(row[1]), float(row[2]), float(row[3]))
        first, last = (row[4], row[5]) if row[4] is not None else (None, None)
        return Extent(catalogs, bounds, first if isinstance(first, date) else None,
                      last if isinstance(last, date) else None)

    def describe(self) -> dict[str, Any]:
        return {**self._index, "engine": self.engine, "n": self._n}

    def close(self) -> None:
        """Close this thread's connection to the store's database."""
        conn = _threads.__dict__.get("conns", {}).pop(self._dsn, None)
        if conn is not None:
            conn.close()


__all__ = ["PgParams", "PgvectorStore", "VectorEngineError", "connect", "describe_database", "drop_index",
           "ensure_schema",
           "read_manifest", "sync_index", "table_name"]
