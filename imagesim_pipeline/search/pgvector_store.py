"""Similarity search over a version's table in PostgreSQL with pgvector (``IMAGESIM_VECTOR_ENGINE=pgvector``).

The tables and their writes are ``search.pgvector_db``'s. Reads (:class:`PgvectorStore`) hold no
index state (each thread keeps one connection per database,
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

import threading
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np

from imagesim_pipeline.search.pgvector_db import PgParams, VectorEngineError, connect, read_manifest, table_name
from imagesim_pipeline.search.stores import Extent, Item

if TYPE_CHECKING:
    import psycopg

    from imagesim_pipeline.search.catalog import IndexManifest
    from imagesim_pipeline.search.engine import Filters

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

    def __init__(self, manifest: IndexManifest, dsn: str = "", params: PgParams | None = None) -> None:
        self.version = manifest.version
        self.build = manifest.build
        self.labels = list(manifest.labels)
        self.thresholds = np.asarray(manifest.thresholds, np.float32)
        self.table = table_name(self.version)
        self.dim = int(manifest.index.get("dim", 0))
        self._n = manifest.vectors
        self._index = manifest.index
        self.params = params or PgParams()
        if not dsn:
            from imagesim_pipeline.settings import settings

            dsn = settings().pgvector_dsn
        self._dsn = dsn

    @classmethod
    def open(cls, version: str, dsn: str = "") -> PgvectorStore:
        """The store of ``version``'s table, from its manifest row."""
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
        """The chip's record, or None when it is not indexed."""
        rows = self._rows(f"SELECT {_ITEM} FROM {self.table} WHERE chip = %s", (chip,))
        return _item(rows[0]) if rows else None

    def embedding(self, chip: str) -> np.ndarray | None:
        """The chip's stored float32 embedding (unit length), or None when it is not indexed."""
        rows = self._rows(f"SELECT embedding FROM {self.table} WHERE chip = %s", (chip,))
        return rows[0][0].to_numpy().astype(np.float32) if rows else None

    def _where(self, filters: Filters, excluded_places: frozenset[str] = frozenset(),
               opaque: bool = False) -> tuple[str, list]:
        """SQL conditions and their arguments. ``opaque`` wraps each in ``IS TRUE``, which no index matches: the
        planner then cannot read the filter indexes first and walks the HNSW index, testing each row."""
        clauses: list[str] = ["TRUE"]
        args: list[Any] = []
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
        """The ``k`` items most like ``query`` passing ``filters``, outside ``excluded_places``, best first."""
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
        """The newest chip of each place in ``bbox`` (at most ``limit``) and how many places it holds."""
        box = "box && box(point(%s, %s), point(%s, %s))"
        total = int(self._rows(f"SELECT count(DISTINCT place) FROM {self.table} WHERE {box}", bbox)[0][0])
        rows = self._rows(f"SELECT DISTINCT ON (place) {_ITEM} FROM {self.table} WHERE {box} "
                          "ORDER BY place, date DESC LIMIT %s", (*bbox, limit))
        return [_item(r) for r in rows], total

    def sample(self, n: int, seed: int = 0) -> list[str]:
        """``n`` chip ids picked by a hash of the seed (the same for the same seed)."""
        rows = self._rows(f"SELECT chip FROM {self.table} ORDER BY md5(chip || %s) LIMIT %s", (str(seed), n))
        return [r[0] for r in rows]

    def extent(self) -> Extent:
        """The catalogs, bounds and dates the table covers."""
        row = self._rows(f"SELECT min((box[1])[0]), min((box[1])[1]), max((box[0])[0]), max((box[0])[1]), "
                         f"min(date), max(date) FROM {self.table}")[0]
        catalogs = [r[0] for r in self._rows(f"SELECT DISTINCT catalog_id FROM {self.table} ORDER BY 1")]
        bounds = None if row[0] is None else (float(row[0]), float(row[1]), float(row[2]), float(row[3]))
        first, last = (row[4], row[5]) if row[4] is not None else (None, None)
        return Extent(catalogs, bounds, first if isinstance(first, date) else None,
                      last if isinstance(last, date) else None)

    def describe(self) -> dict[str, Any]:
        """The index description from the manifest, with the engine and row count."""
        return {**self._index, "engine": self.engine, "n": self._n}

    def close(self) -> None:
        """Close this thread's connection to the store's database."""
        conn = _threads.__dict__.get("conns", {}).pop(self._dsn, None)
        if conn is not None:
            conn.close()


__all__ = ["PgvectorStore"]
