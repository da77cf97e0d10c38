"""The pgvector database behind ``IMAGESIM_VECTOR_ENGINE=pgvector``: connection, schema, manifests, writes.

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

Reads are :class:`~imagesim_pipeline.search.pgvector_store.PgvectorStore`'s.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from imagesim_pipeline.errors import ImagesimError

if TYPE_CHECKING:
    import psycopg

    from imagesim_pipeline.search.catalog import IndexBuild, IndexManifest
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

    version = _scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    if version is None:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        version = _scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    if tuple(int(p) for p in str(version).split(".")[:2]) < (0, 8):
        raise VectorEngineError(f"pgvector {version} is too old: iterative index scans need 0.8 or newer "
                                "(ALTER EXTENSION vector UPDATE)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {MANIFESTS} (version text PRIMARY KEY, manifest jsonb NOT NULL)")
    conn.commit()
    register_vector(conn)


def _scalar(conn: psycopg.Connection, sql: str) -> Any:
    """The first column of the query's first row; None when it returns no row."""
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def describe_database(dsn: str = "") -> str:
    """Where the database is, its PostgreSQL and pgvector versions and the indexed model versions;
    ``VectorEngineError`` when it cannot serve (unreachable, pgvector missing or older than 0.8)."""
    import psycopg

    from imagesim_pipeline.settings import settings

    dsn = dsn or settings().pgvector_dsn
    conn = connect(dsn)
    try:
        server = _scalar(conn, "SHOW server_version")
        ext = _scalar(conn, "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        available = _scalar(conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        try:
            versions = [r[0] for r in conn.execute(f"SELECT version FROM {MANIFESTS} ORDER BY 1").fetchall()]
        except psycopg.errors.UndefinedTable:
            conn.rollback()
            versions = []
    finally:
        conn.close()
    vector = ext or available
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


__all__ = ["MANIFESTS", "PgParams", "VectorEngineError", "connect", "copy_rows", "describe_database", "drop_index",
           "ensure_schema", "read_manifest", "sync_index", "table_name"]
