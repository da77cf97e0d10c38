"""One cell's chip embeddings as GeoParquet: ``embeddings/<model version>/<zone>/<cell>.parquet``.

Rows: every "all data" chip of the cell (the chips a dataset keeps), from the cell's chip manifest
(the chipping completion marker). Columns: ``chip``, ``place`` (the chip's zoom-17 grid cell, the
same for every acquisition of a place), ``cell``, ``catalog_id``, ``date``, ``geometry`` (WKB
polygon, WGS84 longitude/latitude, GeoParquet 1.0 metadata), ``embedding`` (float32 x D, the ONNX
model's ``embedding`` output), ``probs`` (float32 x labels) and ``chip_bytes``. The model's name,
version, labels and thresholds are in the file's metadata.

Keyed by model version, so two models never mix. Re-running a cell re-encodes only the chips that
are new or were re-chipped (a different byte count); each file is written whole and atomically.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from imagesim_pipeline.ard.grid import wgs84_quads
from imagesim_pipeline.chips.cell_chips import read_manifest
from imagesim_pipeline.chips.chipper import ALL_DATA
from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import Bucket, StorageError, layout

if TYPE_CHECKING:  # the encoder brings torch and onnxruntime: reading embeddings (search, changes) needs neither
    from imagesim_pipeline.embeddings.encoder import OnnxEncoder

Progress = Callable[[str], None]


class EmbeddingsError(ImagesimError):
    """A cell's embeddings cannot be made or read; the message names the cell and what to run."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass
class CellEmbeddings:
    """What encoding one cell did: its embeddings table and the counts reported as metadata."""
    cell: str
    version: str
    table: pa.Table
    encoded: int = 0
    reused: int = 0
    unreadable: list[str] = field(default_factory=list)
    seconds: float = 0.0
    repaired: bool = False  # an unreadable earlier file was replaced
    pairs_scored: int = 0  # place pairs scored for change in this run
    pairs_kept: int = 0  # unchanged pairs whose earlier change rows were kept

    @property
    def chips(self) -> int:
        """Chips in the cell's table."""
        return self.table.num_rows


def schema(dim: int, labels: int) -> pa.Schema:
    """The Arrow schema of a cell's embeddings file for ``dim``-d embeddings and ``labels`` labels."""
    return pa.schema([
        ("chip", pa.string()), ("place", pa.string()), ("cell", pa.string()), ("catalog_id", pa.string()),
        ("date", pa.date32()), ("geometry", pa.binary()),
        ("embedding", pa.list_(pa.float32(), dim)), ("probs", pa.list_(pa.float32(), labels)),
        ("chip_bytes", pa.int64()),
    ])


def _geo_metadata(table: pa.Table) -> dict[bytes, bytes]:
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)) if table.num_rows else []
    bbox = list(shapely.total_bounds(geoms)) if len(geoms) else []
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "bbox": bbox}}}  # CRS: OGC:CRS84
    return {b"geo": json.dumps(geo).encode()}


def read_cell_embeddings(bucket: Bucket, version: str, cell_id: str) -> pa.Table | None:
    """The cell's table, or None when it has none for this model version."""
    key = layout.embeddings_key(version, cell_id)
    try:
        data = bucket.read_bytes(key)
    except StorageError:
        return None
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise EmbeddingsError(f"{bucket.url(key)} is not a readable Parquet file ({exc}); materialize "
                              f"chip_embeddings for {cell_id} again (it rebuilds the file)", str(exc)) from None


def iter_embeddings(bucket: Bucket, version: str, warn: Progress | None = None) -> Iterator[tuple[str, pa.Table]]:
    """(cell, table) for every cell with embeddings of ``version``, in key order (one table in memory at a time).

    With ``warn``, an unreadable cell file is named there and skipped; without, it raises.
    """
    for obj in sorted(bucket.list(layout.embeddings_prefix(version)), key=lambda o: o.key):
        if obj.key.endswith(".parquet"):
            cell = obj.key.rsplit("/", 1)[1][: -len(".parquet")]
            try:
                table = read_cell_embeddings(bucket, version, cell)
            except EmbeddingsError as exc:
                if warn is None:
                    raise
                warn(f"{exc}; {cell} is left out until its embeddings are rebuilt")
                continue
            if table is not None:
                yield cell, table


def kept_chips(bucket: Bucket, cell_id: str) -> list[dict]:
    """The cell's written "all data" chips from its manifest."""
    try:
        manifest = read_manifest(bucket, cell_id)
    except StorageError:
        raise EmbeddingsError(f"cell {cell_id} has no chip manifest: materialize chips for it first") from None
    return [dict(r) for r in manifest.chips if r["written"] and r["class"] == ALL_DATA]


def embed_cell(bucket: Bucket, encoder: OnnxEncoder, cell_id: str, progress: Progress = lambda m: None,
               warn: Progress | None = None, changes: bool = False) -> CellEmbeddings:
    """Encode the cell's kept chips (reusing unchanged rows of an earlier run) and write its GeoParquet.

    An earlier file that cannot be read is treated as missing (every chip is encoded again) and
    named through ``warn``. With ``changes`` (and a model with feature maps), the pairs of
    consecutive acquisitions of each place are scored from the same pass
    (:class:`imagesim_pipeline.changes.cell_changes.CellPairScorer`) and written after the embeddings;
    a place whose pairs are not all scored yet has all its chips encoded again.
    """
    started = time.perf_counter()
    rows = kept_chips(bucket, cell_id)
    repaired = False
    try:
        old = read_cell_embeddings(bucket, encoder.version, cell_id)
    except EmbeddingsError as exc:
        (warn or progress)(f"{bucket.url(layout.embeddings_key(encoder.version, cell_id))} is unreadable "
                           f"({exc.reason}): treated as missing, encoding {cell_id} again")
        old, repaired = None, True
    reuse: dict[str, int] = {}  # chip -> its row in the earlier table, when its JPEG is unchanged
    if old is not None and old.schema.equals(schema(encoder.dim, len(encoder.labels))):
        earlier = {c: (i, size) for i, (c, size) in enumerate(zip(old.column("chip").to_pylist(),
                                                                   old.column("chip_bytes").to_pylist()))}
        reuse = {r["chip"]: earlier[r["chip"]][0] for r in rows
                 if r["chip"] in earlier and earlier[r["chip"]][1] == r["bytes"]}
    pairs = None
    places = _places(rows)
    if changes and encoder.has_maps:
        from imagesim_pipeline.changes.cell_changes import CellPairScorer, pair_key, read_cell_changes

        pairs = CellPairScorer()
        scored = read_cell_changes(bucket, encoder.version, cell_id, scorer=pairs.params.fingerprint,
                                   warn=warn or progress)
        for _place, chips in places.items():
            keys = [pair_key(a, b) for a, b in zip(chips, chips[1:])]
            if all(c["chip"] in reuse for c in chips) and all(k in scored for k in keys):
                for k in keys:
                    pairs.keep(scored[k])
            else:  # encoded again whole: its pairs need every chip's feature maps
                for c in chips:
                    reuse.pop(c["chip"], None)
    todo = [c for chips in places.values() for c in chips if c["chip"] not in reuse]  # by place: pairs together
    embeddings = np.zeros((len(rows), encoder.dim), np.float32)
    probs = np.zeros((len(rows), len(encoder.labels)), np.float32)
    position = {r["chip"]: i for i, r in enumerate(rows)}
    if reuse:
        old_emb, old_probs = vectors(old, "embedding"), vectors(old, "probs")
        for chip, i in reuse.items():
            embeddings[position[chip]], probs[position[chip]] = old_emb[i], old_probs[i]
    unreadable: list[str] = []
    done = 0
    for part in _steps(todo, encoder.batch_size * 8):
        images = []
        for r in part:
            try:
                images.append(bucket.read_bytes(chip_key(ChipName.parse(r["chip"]))))
            except StorageError:
                images.append(b"")  # a chip the manifest lists but the bucket lost: unreadable
        out = encoder.encode(images, with_maps=pairs is not None)
        bad = set(out.bad)
        good = [r for j, r in enumerate(part) if j not in bad]
        unreadable += [part[j]["chip"] for j in sorted(bad)]
        for j, r in enumerate(good):
            embeddings[position[r["chip"]]], probs[position[r["chip"]]] = out.embeddings[j], out.probs[j]
        if pairs is not None and out.maps is not None and out.rgb is not None:
            row_of = {r["chip"]: j for j, r in enumerate(good)}
            items = []
            for place, chips in _places(part).items():
                chips = [c for c in chips if c["chip"] in row_of]  # an unreadable chip: its pairs are not scored
                index = [row_of[c["chip"]] for c in chips]
                items.append((place, chips, [{n: m[j] for n, m in out.maps.items()} for j in index],
                              [out.rgb[j] for j in index]))
            pairs.score_places(items)
        done += len(part)
        progress(f"{cell_id}: encoded {done}/{len(todo)} chips ({len(reuse)} unchanged, reused)"
                 + (f"; {pairs.scored} pair(s) scored for change" if pairs is not None else ""))
    lost = set(unreadable)
    keep = [i for i, r in enumerate(rows) if r["chip"] not in lost]
    table = cell_table([rows[i] for i in keep], embeddings[keep], probs[keep], encoder)
    write_cell_embeddings(bucket, encoder.version, cell_id, table)
    if pairs is not None:
        from imagesim_pipeline.changes.cell_changes import write_cell_changes

        write_cell_changes(bucket, encoder.version, cell_id, pairs.rows)
    return CellEmbeddings(cell_id, encoder.version, table, encoded=len(todo) - len(unreadable), reused=len(reuse),
                          unreadable=unreadable, seconds=time.perf_counter() - started, repaired=repaired,
                          pairs_scored=pairs.scored if pairs else 0, pairs_kept=pairs.kept if pairs else 0)


def _places(rows: list[dict]) -> dict[str, list[dict]]:
    """Chip-manifest rows by place (the chip's zoom-17 cell), each place's sorted by date and catalog id."""
    places: dict[str, list[dict]] = {}
    for r in rows:
        places.setdefault(ChipName.parse(r["chip"]).cell.id, []).append(r)
    for chips in places.values():
        chips.sort(key=lambda r: (r["date"], r["catalog_id"]))
    return dict(sorted(places.items()))


def _steps(todo: list[dict], size: int) -> Iterator[list[dict]]:
    """``todo`` (grouped by place) in parts of about ``size`` chips that never split a place."""
    part: list[dict] = []
    for i, r in enumerate(todo):
        part.append(r)
        place = ChipName.parse(r["chip"]).cell.id
        last_of_place = i + 1 == len(todo) or ChipName.parse(todo[i + 1]["chip"]).cell.id != place
        if len(part) >= size and last_of_place:
            yield part
            part = []
    if part:
        yield part


def write_cell_embeddings(bucket: Bucket, version: str, cell_id: str, table: pa.Table) -> str:
    """Publish a cell's table (one atomic object write); its key."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    key = layout.embeddings_key(version, cell_id)
    bucket.write_bytes(key, buffer.getvalue())
    return key


def cell_table(rows: Sequence[Mapping[str, Any]], embeddings: np.ndarray, probs: np.ndarray,
               encoder: OnnxEncoder) -> pa.Table:
    """A cell's GeoParquet table from its chip rows (chip, cell, catalog_id, date, bytes), embeddings and
    probabilities; ``encoder`` gives the model name, version, labels and thresholds kept in its metadata."""
    names = [ChipName.parse(r["chip"]) for r in rows]
    dim, n_labels = embeddings.shape[1], probs.shape[1]
    table = pa.Table.from_arrays([
        pa.array([r["chip"] for r in rows], pa.string()),
        pa.array([n.cell.id for n in names], pa.string()),
        pa.array([r["cell"] for r in rows], pa.string()),
        pa.array([r["catalog_id"] for r in rows], pa.string()),
        pa.array([date.fromisoformat(r["date"]) for r in rows], pa.date32()),
        pa.array(shapely.to_wkb(wgs84_quads([n.cell for n in names])) if names else [], pa.binary()),
        pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim),
        pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1), pa.float32()), n_labels),
        pa.array([int(r["bytes"]) for r in rows], pa.int64()),
    ], schema=schema(dim, n_labels))
    meta = {b"imagesim": json.dumps({"model": encoder.name, "version": encoder.version, "labels": encoder.labels,
                                     "thresholds": encoder.thresholds}).encode()}
    return table.replace_schema_metadata({**_geo_metadata(table), **meta})


def table_meta(table: pa.Table) -> dict:
    """The model name, version, labels and thresholds a cell's table carries (written by :func:`cell_table`)."""
    return json.loads(table.schema.metadata[b"imagesim"])


def vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """A fixed-size-list column as a (N, D) float32 array."""
    col = table.column(column).combine_chunks()
    width = col.type.list_size
    return np.asarray(col.flatten(), np.float32).reshape(-1, width)


__all__ = ["CellEmbeddings", "EmbeddingsError", "cell_table", "embed_cell", "iter_embeddings", "kept_chips",
           "read_cell_embeddings", "schema", "table_meta", "vectors", "write_cell_embeddings"]
