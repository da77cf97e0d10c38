"""The similarity index in the bucket: ``index/<model version>/``.

* ``index.faiss``: the FAISS index (``search.index``) over the L2-normalised embeddings; ids are
  row numbers of the items table;
* ``items.parquet``: one row per indexed chip, in id order: ``chip``, ``place``, ``cell``,
  ``catalog_id``, ``date``, ``geometry`` (WKB, WGS84), its bounds ``minx`` .. ``maxy`` and
  ``probs`` (the model's label probabilities);
* ``manifest.json``, written last (the completion marker): model version, labels, thresholds,
  index parameters and description, and each cell's embeddings file (key, size, time) the index
  holds, so an update knows what changed.

An update with only new cells extends the index (the old ids stay); a changed or removed cell
rebuilds it. Versions never mix: every file of a version sits under its own prefix and is built
only from ``embeddings/<version>/``.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from imagesim_pipeline.embeddings.cell_embeddings import read_cell_embeddings, vectors, version_prefix
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.search.index import (
    IndexParams,
    build_index,
    describe,
    extend_index,
    from_bytes,
    normalise,
    to_bytes,
)
from imagesim_pipeline.storage import Bucket, StorageError, layout

INDEX_PREFIX = layout.INDEX
INDEX_FILE, ITEMS_FILE, MANIFEST_FILE = "index.faiss", "items.parquet", "manifest.json"
Progress = Callable[[str], None]


class IndexNotFoundError(ImagesimError):
    """A model version has no (complete) similarity index; the message says what to materialize."""


index_key = layout.index_key


@dataclass
class IndexBuild:
    version: str
    mode: str  # "built", "extended" or "unchanged"
    vectors: int
    cells: int
    added: int
    seconds: float
    description: dict


def _listing(bucket: Bucket, version: str) -> dict[str, dict]:
    out = {}
    for obj in bucket.list(version_prefix(version)):
        if obj.key.endswith(".parquet"):
            cell = obj.key.rsplit("/", 1)[1][: -len(".parquet")]
            out[cell] = {"key": obj.key, "size": obj.size, "modified": obj.modified.isoformat()}
    return out


def read_manifest(bucket: Bucket, version: str) -> dict:
    try:
        return json.loads(bucket.read_text(index_key(version, MANIFEST_FILE)))
    except (StorageError, json.JSONDecodeError):
        raise IndexNotFoundError(f"model {version} has no similarity index at {bucket.url(index_key(version, ''))}: "
                                 "materialize chip_embeddings and similarity_index (encoder_job)") from None


def _items(table: pa.Table) -> pa.Table:
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    bounds = shapely.bounds(geoms) if len(geoms) else np.zeros((0, 4))
    columns = {name: table.column(name) for name in ("chip", "place", "cell", "catalog_id", "date", "geometry")}
    for i, name in enumerate(("minx", "miny", "maxx", "maxy")):
        columns[name] = pa.array(bounds[:, i], pa.float64())
    columns["probs"] = table.column("probs")
    return pa.table(columns)


def build_similarity_index(bucket: Bucket, version: str, params: IndexParams | None = None,
                           progress: Progress = lambda m: None) -> IndexBuild:
    """Build, extend or keep ``index/<version>/`` so that it holds every cell's embeddings of ``version``."""
    started = time.perf_counter()
    params = params or IndexParams()
    listing = _listing(bucket, version)
    if not listing:
        raise IndexNotFoundError(f"no embeddings under {bucket.url(version_prefix(version))}: materialize "
                                 "chip_embeddings for some cells first")
    try:
        old = read_manifest(bucket, version)
    except IndexNotFoundError:
        old = None
    same_params = old is not None and old["params"] == params.to_dict()
    if same_params and old["cells"] == listing:
        return IndexBuild(version, "unchanged", old["vectors"], len(listing), 0, time.perf_counter() - started,
                          old["index"])
    extend = same_params and all(listing.get(c) == f for c, f in old["cells"].items())
    new_cells = sorted(set(listing) - set(old["cells"])) if extend else sorted(listing)
    tables = [t for t in (read_cell_embeddings(bucket, version, cell) for cell in new_cells) if t is not None]
    meta = json.loads(tables[0].schema.metadata[b"imagesim"]) if tables else None
    added = pa.concat_tables([t.drop_columns(["embedding"]).combine_chunks() for t in tables]) if tables else None
    fresh = normalise(np.concatenate([vectors(t) for t in tables])) if tables else np.zeros((0, 1), np.float32)
    if extend:
        index = from_bytes(bucket.read_bytes(index_key(version, INDEX_FILE)))
        items = pq.read_table(io.BytesIO(bucket.read_bytes(index_key(version, ITEMS_FILE))))
        if len(fresh):
            extend_index(index, fresh)
            items = pa.concat_tables([items, _items(added)])
        meta = {"labels": old["labels"], "thresholds": old["thresholds"], "model": old.get("model")}
        mode = "extended"
        progress(f"index {version}: extending with {len(fresh)} vectors of {len(new_cells)} new cell(s)")
    else:
        progress(f"index {version}: building over {len(fresh)} vectors of {len(new_cells)} cell(s)")
        index = build_index(fresh, params)
        items = _items(added)
        mode = "built"
    if index.ntotal != items.num_rows:
        raise ImagesimError(f"index {version}: {index.ntotal} vectors but {items.num_rows} items; rebuild it")
    buffer = io.BytesIO()
    pq.write_table(items, buffer, compression="zstd")
    bucket.write_bytes(index_key(version, INDEX_FILE), to_bytes(index))
    bucket.write_bytes(index_key(version, ITEMS_FILE), buffer.getvalue())
    description = describe(index)
    manifest = {"version": version, "model": meta.get("model"), "labels": meta["labels"],
                "thresholds": meta["thresholds"], "params": params.to_dict(), "index": description,
                "vectors": int(index.ntotal), "cells": listing, "built": time.time()}
    bucket.write_text(index_key(version, MANIFEST_FILE), json.dumps(manifest, indent=1))
    return IndexBuild(version, mode, int(index.ntotal), len(listing), len(fresh), time.perf_counter() - started,
                      description)


def load_index(bucket: Bucket, version: str) -> tuple["object", pa.Table, dict]:
    """(FAISS index, items table, manifest) of a complete index; :class:`IndexNotFoundError` otherwise."""
    manifest = read_manifest(bucket, version)
    try:
        index = from_bytes(bucket.read_bytes(index_key(version, INDEX_FILE)))
        items = pq.read_table(io.BytesIO(bucket.read_bytes(index_key(version, ITEMS_FILE))))
    except StorageError as exc:
        raise IndexNotFoundError(f"the similarity index of {version} is incomplete ({exc}): materialize "
                                 "similarity_index again") from None
    if not (index.ntotal == items.num_rows == manifest["vectors"]):
        raise IndexNotFoundError(f"the similarity index of {version} is inconsistent ({index.ntotal} vectors, "
                                 f"{items.num_rows} items, manifest {manifest['vectors']}): materialize "
                                 "similarity_index again")
    return index, items, manifest


__all__ = ["INDEX_PREFIX", "IndexBuild", "IndexNotFoundError", "build_similarity_index", "index_key",
           "load_index", "read_manifest"]
