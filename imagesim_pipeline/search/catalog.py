"""The similarity index in the bucket: ``index/<model version>/``.

* ``builds/<build>/index.faiss``: the FAISS index (``search.index``) over the L2-normalised
  embeddings; ids are row numbers of the items table;
* ``builds/<build>/items.parquet``: one row per indexed chip, in id order: ``chip``, ``place``,
  ``cell``, ``catalog_id``, ``date``, ``geometry`` (WKB, WGS84), its bounds ``minx`` .. ``maxy``
  and ``probs`` (the model's label probabilities);
* ``builds/<build>/vectors.npy``: with the quantised kind ``ivf_rabitq`` only, the float16
  vectors its shortlist is re-ranked against (memory-mapped: from the folder of a local bucket,
  else from a copy under ``<data>/cache/``);
* ``manifest.json``, written last (the completion marker, :class:`IndexManifest`): the current
  build, model version, labels, thresholds, index parameters and description, and each cell's
  embeddings file (key, size, time) the index holds, so an update knows what changed.

Every update writes a new build folder and then moves the manifest to it, so a reader never sees
the index of one build beside the items of another, and a running service notices a rebuild of
the same version by the manifest's ``build``. The build before the current one is kept for
readers that loaded its manifest a moment ago; older ones are deleted.

An update with only new cells extends the index (the old ids stay); a changed or removed cell
rebuilds it. An unreadable manifest, index or items file is treated as missing (a full rebuild,
named in a warning); an unreadable cell file is left out and named, and picked up once re-encoded.
Versions never mix: every file of a version sits under its own prefix and is built only from
``embeddings/<version>/``.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pydantic import BaseModel

from imagesim_pipeline.embeddings.cell_embeddings import (
    EmbeddingsError,
    read_cell_embeddings,
    table_meta,
    vectors,
)
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.search.index import (
    IndexParams,
    SimilarityIndex,
    build_index,
    describe,
    extend_index,
    from_bytes,
    index_kind,
    normalise,
    to_bytes,
)
from imagesim_pipeline.storage import Bucket, StorageError, StorageUnavailableError, layout
from imagesim_pipeline.storage.records import CorruptRecordError, read_record, write_record

INDEX_FILE, ITEMS_FILE, MANIFEST_FILE = "index.faiss", "items.parquet", "manifest.json"
VECTORS_FILE = "vectors.npy"  # the quantised kind's float16 re-rank vectors (search.quantised)
Progress = Callable[[str], None]


class IndexNotFoundError(ImagesimError):
    """A model version has no (complete) similarity index; the message says what to materialize."""


class IndexManifest(BaseModel):
    """``index/<version>/manifest.json``: the completion marker and description of a version's index."""

    version: str
    build: str = ""  # "" for an index written before builds had folders (files beside the manifest)
    model: str | None = None
    labels: list[str]
    thresholds: list[float]
    params: dict[str, Any]
    index: dict[str, Any]
    vectors: int
    cells: dict[str, dict[str, Any]]
    built: float

    def key(self, file: str) -> str:
        """The bucket key of one of this index's files (its build folder, or beside the manifest for an old index)."""
        return layout.index_build_key(self.version, self.build, file) if self.build \
            else layout.index_key(self.version, file)


@dataclass
class IndexBuild:
    """What one build, extension or check of a version's index did (returned to the asset and the CLI)."""
    version: str
    mode: str  # "built", "extended" or "unchanged"
    vectors: int
    cells: int
    added: int
    seconds: float
    description: dict
    build: str = ""
    left_out: tuple[str, ...] = ()  # cells whose embeddings file is unreadable


def embeddings_listing(bucket: Bucket, version: str) -> dict[str, dict]:
    """Each cell's embeddings file of ``version`` in the bucket: cell -> key, size, modified time."""
    out = {}
    for obj in bucket.list(layout.embeddings_prefix(version)):
        if obj.key.endswith(".parquet"):
            cell = obj.key.rsplit("/", 1)[1][: -len(".parquet")]
            out[cell] = {"key": obj.key, "size": obj.size, "modified": obj.modified.isoformat()}
    return out


def _missing(bucket: Bucket, version: str) -> IndexNotFoundError:
    return IndexNotFoundError(f"model {version} has no similarity index at "
                              f"{bucket.url(layout.index_key(version, ''))}: "
                              "materialize chip_embeddings and similarity_index (encoder_job)")


def read_manifest(bucket: Bucket, version: str) -> IndexManifest:
    """The index manifest of ``version``; :class:`IndexNotFoundError` when there is none."""
    manifest = read_record(bucket, layout.index_key(version, MANIFEST_FILE), IndexManifest,
                           "materialize similarity_index again (it rebuilds the index)")
    if manifest is None:
        raise _missing(bucket, version)
    return manifest


def has_index(bucket: Bucket, version: str) -> bool:
    """Whether ``version`` has a complete index (a manifest that reads)."""
    try:
        read_manifest(bucket, version)
    except (IndexNotFoundError, CorruptRecordError):
        return False
    return True


def _items(table: pa.Table) -> pa.Table:
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    bounds = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
    columns = {name: table.column(name) for name in ("chip", "place", "cell", "catalog_id", "date", "geometry")}
    for i, name in enumerate(("minx", "miny", "maxx", "maxy")):
        columns[name] = pa.array(bounds[:, i], pa.float64())
    columns["probs"] = table.column("probs")
    return pa.table(columns)


def _previous(bucket: Bucket, version: str, warn: Progress) -> IndexManifest | None:
    """The current manifest, or None when there is none or it is unreadable (named in a warning)."""
    try:
        return read_manifest(bucket, version)
    except IndexNotFoundError:
        return None
    except CorruptRecordError as exc:
        warn(f"{exc}; rebuilding the index from every cell")
        return None


def _load_files(bucket: Bucket, manifest: IndexManifest) -> tuple[Any, pa.Table]:
    """The FAISS index and items table a manifest names; :class:`IndexNotFoundError` when either is unreadable."""
    try:
        if manifest.index.get("kind") == "ivf_rabitq":
            index = _load_reranked(bucket, manifest)
        else:
            index = from_bytes(bucket.read_bytes(manifest.key(INDEX_FILE)))
        items = pq.read_table(io.BytesIO(bucket.read_bytes(manifest.key(ITEMS_FILE))))
    except StorageUnavailableError:
        raise
    except StorageError as exc:
        raise IndexNotFoundError(f"the similarity index of {manifest.version} is incomplete ({exc}): materialize "
                                 "similarity_index again") from None
    except Exception as exc:  # noqa: BLE001 - FAISS and Arrow raise their own types for damaged bytes
        raise IndexNotFoundError(f"the similarity index of {manifest.version} at "
                                 f"{bucket.url(manifest.key(''))} is unreadable ({type(exc).__name__}: {exc}): "
                                 "materialize similarity_index again (it rebuilds it)") from None
    if not (index.ntotal == items.num_rows == manifest.vectors):
        raise IndexNotFoundError(f"the similarity index of {manifest.version} is inconsistent ({index.ntotal} vectors, "
                                 f"{items.num_rows} items, manifest {manifest.vectors}): materialize "
                                 "similarity_index again")
    return index, items


def _load_reranked(bucket: Bucket, manifest: IndexManifest) -> Any:
    """The quantised index, its float16 vectors memory-mapped from a local file (copied once from a remote bucket)."""
    from imagesim_pipeline.search.quantised import RerankedIndex
    from imagesim_pipeline.settings import data_dir
    from imagesim_pipeline.storage import LocalBucket

    key = manifest.key(VECTORS_FILE)
    if isinstance(bucket, LocalBucket):
        path = bucket.root / key
        if not path.is_file():
            raise StorageError(f"{bucket.url(key)} is missing")
    else:
        path = data_dir() / "cache" / key
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            bucket.download_file(key, partial)
            partial.replace(path)
    params = manifest.index.get("params", {})
    return RerankedIndex.load(bucket.read_bytes(manifest.key(INDEX_FILE)), path, params.get("nprobe", 32),
                              params.get("shortlist", 500))


def _read_cells(bucket: Bucket, version: str, cells: list[str], warn: Progress) -> tuple[list[pa.Table], list[str]]:
    """The readable cells' tables, and the cells left out because their file is unreadable."""
    tables, left_out = [], []
    for cell in cells:
        try:
            table = read_cell_embeddings(bucket, version, cell)
        except EmbeddingsError as exc:
            warn(f"{exc}; {cell} is left out of the index until its embeddings are rebuilt")
            left_out.append(cell)
            continue
        if table is not None:
            tables.append(table)
    return tables, left_out


def build_similarity_index(bucket: Bucket, version: str, params: IndexParams | None = None,
                           progress: Progress = lambda m: None, warn: Progress | None = None) -> IndexBuild:
    """Build, extend or keep ``index/<version>/`` so that it holds every readable cell's embeddings of ``version``."""
    started = time.perf_counter()
    warn = warn or progress
    params = params or IndexParams()
    listing = embeddings_listing(bucket, version)
    if not listing:
        raise IndexNotFoundError(f"no embeddings under {bucket.url(layout.embeddings_prefix(version))}: materialize "
                                 "chip_embeddings for some cells first")
    old = _previous(bucket, version, warn)
    same_params = old is not None and old.params == params.to_dict()
    if old is not None and same_params and old.cells == listing:
        return IndexBuild(version, "unchanged", old.vectors, len(listing), 0, time.perf_counter() - started,
                          old.index, old.build)
    loaded: tuple[SimilarityIndex, pa.Table] | None = None
    if old is not None and same_params and all(listing.get(c) == f for c, f in old.cells.items()):
        try:
            loaded = _load_files(bucket, old)
        except IndexNotFoundError as exc:
            warn(f"{exc}; rebuilding the index from every cell")
    new_cells = sorted(set(listing) - set(old.cells)) if old is not None and loaded else sorted(listing)
    tables, left_out = _read_cells(bucket, version, new_cells, warn)
    meta: dict[str, Any] = table_meta(tables[0]) if tables else {}
    added = pa.concat_tables([t.drop_columns(["embedding"]).combine_chunks() for t in tables]) if tables else None
    fresh = normalise(np.concatenate([vectors(t) for t in tables])) if tables else np.zeros((0, 1), np.float32)
    if old is not None and loaded:
        index, items = loaded
        if len(fresh):
            extend_index(index, fresh)
            items = pa.concat_tables([items, _items(added)])
        meta = {"labels": old.labels, "thresholds": old.thresholds, "model": old.model}
        mode = "extended"
        progress(f"index {version}: extending with {len(fresh)} vectors of {len(new_cells)} new cell(s)")
    else:
        if not tables:
            raise IndexNotFoundError(f"no readable embeddings under {bucket.url(layout.embeddings_prefix(version))} "
                                     f"({len(left_out)} unreadable): materialize chip_embeddings again")
        progress(f"index {version}: building over {len(fresh)} vectors of {len(tables)} cell(s)")
        index = build_index(fresh, params)
        items = _items(added)
        mode = "built"
    if index.ntotal != items.num_rows:
        raise ImagesimError(f"index {version}: {index.ntotal} vectors but {items.num_rows} items; rebuild it")
    build = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    buffer = io.BytesIO()
    pq.write_table(items, buffer, compression="zstd")
    if index_kind(index) == "ivf_rabitq":
        bucket.write_bytes(layout.index_build_key(version, build, VECTORS_FILE), index.vectors_bytes())
        bucket.write_bytes(layout.index_build_key(version, build, INDEX_FILE), index.codes_bytes())
    else:
        bucket.write_bytes(layout.index_build_key(version, build, INDEX_FILE), to_bytes(index))
    bucket.write_bytes(layout.index_build_key(version, build, ITEMS_FILE), buffer.getvalue())
    description = describe(index)
    held = {cell: entry for cell, entry in listing.items() if cell not in set(left_out)}
    manifest = IndexManifest(version=version, build=build, model=meta.get("model"), labels=meta["labels"],
                             thresholds=meta["thresholds"], params=params.to_dict(), index=description,
                             vectors=int(index.ntotal), cells=held, built=time.time())
    write_record(bucket, layout.index_key(version, MANIFEST_FILE), manifest)  # the new build becomes current
    _drop_old_builds(bucket, version, keep={build, old.build if old else ""})
    return IndexBuild(version, mode, int(index.ntotal), len(held), len(fresh), time.perf_counter() - started,
                      description, build, tuple(left_out))


def _drop_old_builds(bucket: Bucket, version: str, keep: set[str]) -> None:
    prefix = layout.index_key(version, "builds/")
    stale = {obj.key[len(prefix):].split("/", 1)[0] for obj in bucket.list(prefix)} - keep
    for build in stale:
        bucket.delete_prefix(f"{prefix}{build}/")
    for file in (INDEX_FILE, ITEMS_FILE):  # an index written before builds had folders
        bucket.delete(layout.index_key(version, file))


def load_index(bucket: Bucket, version: str) -> tuple[Any, pa.Table, IndexManifest]:
    """(FAISS index, items table, manifest) of a complete index; :class:`IndexNotFoundError` otherwise."""
    manifest = read_manifest(bucket, version)
    index, items = _load_files(bucket, manifest)
    return index, items, manifest


__all__ = ["IndexBuild", "IndexManifest", "IndexNotFoundError", "build_similarity_index", "has_index", "load_index",
           "read_manifest"]
