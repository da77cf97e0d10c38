"""Where a model version's indexed chips live, behind one interface: :class:`VectorStore`.

Two implementations, chosen by the ``vector_engine`` setting (``IMAGESIM_VECTOR_ENGINE``):

* ``faiss`` (the embedded default): :class:`FaissStore`, the version's FAISS file and items table
  from the bucket (``search.catalog``), loaded whole into this process; filters are boolean masks
  over its rows.
* ``pgvector``: ``search.pgvector_store.PgvectorStore``, one table per version in PostgreSQL with
  pgvector (``IMAGESIM_PGVECTOR_DSN``); filters are SQL, the process holds only a connection pool, so
  any number of search processes share one index.

:class:`~imagesim_pipeline.search.engine.SearchEngine` composes query vectors, drops the examples'
places, spreads results and builds hits over either. :func:`open_store`, :func:`index_build` and
:func:`write_index` pick the implementation from the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import shapely

if TYPE_CHECKING:
    from imagesim_pipeline.search.catalog import IndexBuild
    from imagesim_pipeline.search.engine import Filters
    from imagesim_pipeline.search.index import IndexParams
    from imagesim_pipeline.storage import Bucket

ENGINES = ("faiss", "pgvector")


@dataclass(frozen=True)
class Item:
    """One indexed chip: what a hit, a chip's description and the place grid show."""

    chip: str
    place: str
    date: date
    catalog_id: str
    wkb: bytes  # the chip's WGS84 outline
    probs: np.ndarray  # the model's label probabilities, in the store's label order

    @property
    def geometry(self) -> shapely.Geometry:
        """The chip's WGS84 outline as a shapely geometry."""
        return shapely.from_wkb(self.wkb)


@dataclass(frozen=True)
class Extent:
    """What a store holds, for explaining an empty answer."""

    catalog_ids: list[str]
    bounds: tuple[float, float, float, float] | None  # west, south, east, north
    first: date | None
    last: date | None


class VectorStore(Protocol):
    """The indexed chips of one model version: metadata, stored embeddings, filtered nearest neighbours."""

    version: str
    build: str  # changes whenever the indexed content changes
    labels: list[str]
    thresholds: np.ndarray
    engine: str

    def __len__(self) -> int: ...

    def item(self, chip: str) -> Item | None:
        """The chip's record, or None when it is not indexed."""

    def embedding(self, chip: str) -> np.ndarray | None:
        """The chip's embedding when the store keeps it losslessly (float32 or float16), else None."""

    def nearest(self, query: np.ndarray, k: int, filters: Filters,
                excluded_places: frozenset[str]) -> list[tuple[float, Item]]:
        """Up to ``k`` chips most similar (cosine) to the unit vector ``query`` that pass ``filters``,
        none of them in ``excluded_places``, best first; fewer only when fewer pass."""

    def count(self, filters: Filters) -> int:
        """How many indexed chips pass ``filters``."""

    def newest_per_place(self, bbox: tuple[float, float, float, float], limit: int) -> tuple[list[Item], int]:
        """The newest chip of each place meeting ``bbox`` (at most ``limit``), and the number of such places."""

    def sample(self, n: int, seed: int = 0) -> list[str]:
        """``n`` indexed chip ids drawn at random (all of them when fewer)."""

    def extent(self) -> Extent:
        """Catalog ids, bounds and date range of everything indexed."""

    def describe(self) -> dict[str, Any]:
        """Engine, kind, vector count and parameters, for health and metadata."""


# --------------------------------------------------------------------------- FAISS, in this process

class FaissStore:
    """A version's FAISS index and items table (``search.catalog``), loaded into this process."""

    engine = "faiss"

    def __init__(self, bucket: Bucket, version: str) -> None:
        from imagesim_pipeline.embeddings.cell_embeddings import vectors
        from imagesim_pipeline.search.catalog import load_index

        self.version = version
        self.index, items, manifest = load_index(bucket, version)
        self.build = manifest.build
        self.labels: list[str] = manifest.labels
        self.thresholds = np.asarray(manifest.thresholds, np.float32)
        self.chips = np.asarray(items.column("chip").to_pylist(), dtype=object)
        self.places = np.asarray(items.column("place").to_pylist(), dtype=object)
        self.catalog_ids = np.asarray(items.column("catalog_id").to_pylist(), dtype=object)
        self.dates = items.column("date").to_numpy(zero_copy_only=False).astype("datetime64[D]")
        self.bounds = np.stack([items.column(c).to_numpy() for c in ("minx", "miny", "maxx", "maxy")], axis=1) \
            if items.num_rows else np.zeros((0, 4))
        self.geometry = items.column("geometry")
        self.probs = vectors(items, "probs") if items.num_rows else np.zeros((0, len(self.labels)), np.float32)
        self.row_of = {chip: i for i, chip in enumerate(self.chips)}
        names, self.place_codes = np.unique(self.places.astype(str), return_inverse=True) if len(self.places) \
            else (np.zeros(0, str), np.zeros(0, np.int64))
        self._place_code = {name: code for code, name in enumerate(names.tolist())}
        self._last_mask: tuple[Any, np.ndarray | None] = (None, None)

    def __len__(self) -> int:
        return len(self.chips)

    def _item(self, i: int) -> Item:
        return Item(self.chips[i], self.places[i], self.dates[i].astype(date), self.catalog_ids[i],
                    self.geometry[i].as_py(), self.probs[i])

    def item(self, chip: str) -> Item | None:
        """The chip's record, or None when it is not indexed."""
        i = self.row_of.get(chip)
        return None if i is None else self._item(i)

    def embedding(self, chip: str) -> np.ndarray | None:
        """The chip's stored embedding, or None for the 8-bit kinds (their decoded vectors are approximations)."""
        from imagesim_pipeline.search.index import stored_vector

        i = self.row_of.get(chip)
        return None if i is None else stored_vector(self.index, i)

    def mask(self, filters: Filters) -> np.ndarray:
        """The rows that pass ``filters`` (labels already checked against :attr:`labels`)."""
        keep = np.ones(len(self), bool)
        if filters.bbox:
            w, s, e, n = filters.bbox
            b = self.bounds
            keep &= (b[:, 0] <= e) & (b[:, 2] >= w) & (b[:, 1] <= n) & (b[:, 3] >= s)
        for label in filters.labels:
            j = self.labels.index(label)
            keep &= self.probs[:, j] >= self.thresholds[j]
        if filters.since:
            keep &= self.dates >= np.datetime64(filters.since, "D")
        if filters.until:
            keep &= self.dates <= np.datetime64(filters.until, "D")
        if filters.catalog_ids:
            keep &= np.isin(self.catalog_ids, list(filters.catalog_ids))
        return keep

    def _allowed(self, filters: Filters) -> np.ndarray | None:
        """The mask of ``filters``, or None without filters (no O(n) work then); the last one is reused, as a
        query asks again with a larger ``k`` when places repeat."""
        if not filters.active():
            return None
        cached = self._last_mask  # one read: the service's threads replace it concurrently
        if cached[0] == filters:
            return cached[1]
        mask = self.mask(filters)
        self._last_mask = (filters, mask)
        return mask

    def nearest(self, query: np.ndarray, k: int, filters: Filters,
                excluded_places: frozenset[str] = frozenset()) -> list[tuple[float, Item]]:
        """The ``k`` items most like ``query`` passing ``filters``, outside ``excluded_places``, best first."""
        from imagesim_pipeline.search.index import search

        allowed = self._allowed(filters)
        available = len(self) if allowed is None else int(allowed.sum())
        fetch = min(available, k + 4 * len(excluded_places))
        while fetch > 0:
            scores, ids = search(self.index, query[None].astype(np.float32), fetch, allowed=allowed)
            found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0])
                     if i >= 0 and self.places[i] not in excluded_places]
            if len(found) >= k or fetch >= available:
                return [(s, self._item(i)) for s, i in found[:k]]
            fetch = min(available, fetch * 4)
        return []

    def count(self, filters: Filters) -> int:
        """How many chips pass ``filters``."""
        return len(self) if not filters.active() else int(self.mask(filters).sum())

    def newest_per_place(self, bbox: tuple[float, float, float, float], limit: int) -> tuple[list[Item], int]:
        """The newest chip of each place meeting ``bbox`` (at most ``limit``) and how many places there are."""
        w, s, e, n = bbox
        b = self.bounds
        rows = np.flatnonzero((b[:, 0] <= e) & (b[:, 2] >= w) & (b[:, 1] <= n) & (b[:, 3] >= s))
        if not len(rows):
            return [], 0
        newest = rows[np.lexsort((-self.dates[rows].astype(np.int64), self.place_codes[rows]))]
        first = np.r_[True, self.place_codes[newest][1:] != self.place_codes[newest][:-1]]
        newest = newest[first]
        return [self._item(int(i)) for i in newest[:limit]], len(newest)

    def sample(self, n: int, seed: int = 0) -> list[str]:
        """``n`` chip ids drawn at random (the same for the same seed)."""
        rows = np.random.default_rng(seed).choice(len(self), size=min(n, len(self)), replace=False)
        return [self.chips[i] for i in rows]

    def extent(self) -> Extent:
        """The catalogs, bounds and dates the index covers."""
        if not len(self):
            return Extent([], None, None, None)
        b = self.bounds
        return Extent(sorted(set(self.catalog_ids.tolist())),
                      (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())),
                      self.dates.min().astype(date), self.dates.max().astype(date))

    def describe(self) -> dict[str, Any]:
        """The index's kind, size and parameters (``search.index.describe``)."""
        from imagesim_pipeline.search.index import describe

        return {"engine": self.engine, **describe(self.index)}


# --------------------------------------------------------------------------- choosing by the setting

def engine_setting() -> str:
    from imagesim_pipeline.settings import settings

    return settings().vector_engine


def open_store(bucket: Bucket, version: str) -> VectorStore:
    """The store of ``version`` on the configured engine; ``IndexNotFoundError`` when it has no complete index."""
    if engine_setting() == "pgvector":
        from imagesim_pipeline.search.pgvector_store import PgvectorStore

        return PgvectorStore.open(version)
    return FaissStore(bucket, version)


def index_build(bucket: Bucket, version: str) -> str:
    """The build id of ``version``'s complete index on the configured engine (it changes with the content);
    ``IndexNotFoundError`` when there is none."""
    if engine_setting() == "pgvector":
        from imagesim_pipeline.search.pgvector_db import read_manifest as read_pg_manifest

        return read_pg_manifest(version).build
    from imagesim_pipeline.search.catalog import read_manifest

    return read_manifest(bucket, version).build


def has_index(bucket: Bucket, version: str) -> bool:
    """Whether ``version`` has a complete index on the configured engine."""
    from imagesim_pipeline.errors import ImagesimError

    try:
        index_build(bucket, version)
    except ImagesimError:
        return False
    return True


def engine_status(bucket: Bucket | None = None) -> str:
    """One line on the configured engine (for ``imagesim check``); an ``ImagesimError`` saying what is wrong."""
    if engine_setting() == "pgvector":
        from imagesim_pipeline.search.pgvector_db import describe_database

        return f"vector engine: pgvector, {describe_database()}"
    where = f" under {bucket.url('index/')}" if bucket is not None else ""
    return f"vector engine: faiss (embedded: each search process loads its index file{where})"


def write_index(bucket: Bucket, version: str, params: IndexParams | None = None,
                progress: Callable[[str], None] = lambda m: None,
                warn: Callable[[str], None] | None = None) -> IndexBuild:
    """Bring ``version``'s index on the configured engine up to date with its embeddings in the bucket."""
    if engine_setting() == "pgvector":
        from imagesim_pipeline.search.pgvector_db import sync_index

        return sync_index(bucket, version, progress=progress, warn=warn)
    from imagesim_pipeline.search.catalog import build_similarity_index

    return build_similarity_index(bucket, version, params, progress=progress, warn=warn)


__all__ = ["ENGINES", "Extent", "FaissStore", "Item", "VectorStore", "engine_status", "has_index", "index_build",
           "open_store", "write_index"]
