"""Labels of one level-12 cell's chips, stored in the bucket.

Reads the cell's ``osm_data.json`` and its nodata index table, labels every chip footprint
once (acquisitions of one place share it) and writes, each atomically:

* ``labels/<zone>/<cell>.coverage.parquet``  per footprint and label: area share, metres, count
  (every measured label, also below its minimum: for tuning the vocabulary)
* ``labels/<zone>/<cell>.csv``               the sparse encoding ``chip,labels`` (label ids)
* ``labels/<zone>/<cell>.parquet``           per chip: label ids and names with their coverage,
  plus the nodata class; written last, it marks the cell as labelled.

Each Parquet file carries the vocabulary and its fingerprint in its schema metadata.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.chips.naming import ChipName
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.labels.encoding import write_sparse_csv
from imagesim_pipeline.labels.labeller import FootprintLabels, label_footprints
from imagesim_pipeline.labels.osm_geometry import osm_features
from imagesim_pipeline.labels.vocabulary import Vocabulary, vocabulary_from_json
from imagesim_pipeline.osm.store import read_osm_data
from imagesim_pipeline.storage import Bucket, StorageError, layout

VOCAB_META = b"imagesim.vocabulary"
FINGERPRINT_META = b"imagesim.vocabulary_fingerprint"

CHIP_SCHEMA = pa.schema([
    ("chip", pa.string()), ("cell", pa.string()), ("footprint", pa.string()), ("catalog_id", pa.string()),
    ("date", pa.string()), ("class", pa.string()), ("valid_fraction", pa.float32()),
    ("cloud_fraction", pa.float32()), ("label_ids", pa.list_(pa.int8())), ("labels", pa.list_(pa.string())),
    ("area_share", pa.list_(pa.float32())), ("length_m", pa.list_(pa.float32())), ("count", pa.list_(pa.int32())),
])
COVERAGE_SCHEMA = pa.schema([
    ("footprint", pa.string()), ("label_id", pa.int8()), ("label", pa.string()), ("present", pa.bool_()),
    ("area_share", pa.float32()), ("length_m", pa.float32()), ("count", pa.int32()),
])


class LabelError(ImagesimError):
    """A cell could not be labelled; the message names the cell and what to do."""


def labels_key(cell_id: str) -> str:
    """The key of the cell's label table."""
    return layout.labels_key(cell_id)


def coverage_key(cell_id: str) -> str:
    """The key of the cell's coverage table (area share, length, count per label)."""
    return layout.labels_key(cell_id, "coverage.parquet")


def csv_key(cell_id: str) -> str:
    """The key of the cell's sparse label CSV."""
    return layout.labels_key(cell_id, "csv")


@dataclass
class CellLabels:
    """What labelling one cell wrote, with counts for the asset metadata."""

    cell: str
    table: pa.Table  # CHIP_SCHEMA
    footprints: FootprintLabels
    features: dict[str, int]
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def histogram(self) -> dict[str, int]:
        """Chips carrying each label."""
        counts = dict.fromkeys(self.footprints.labels, 0)
        for names in self.table.column("labels").to_pylist():
            for name in names:
                counts[name] += 1
        return counts

    @property
    def unlabelled(self) -> int:
        """Chips that carry no label."""
        return sum(1 for ids in self.table.column("label_ids").to_pylist() if not ids)


def with_vocabulary(schema: pa.Schema, vocabulary: Vocabulary) -> pa.Schema:
    """``schema`` with the vocabulary (and its fingerprint) in its metadata."""
    return schema.with_metadata({VOCAB_META: vocabulary.to_json().encode(),
                                 FINGERPRINT_META: vocabulary.fingerprint.encode()})


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _chip_table(chips: pa.Table, result: FootprintLabels, vocabulary: Vocabulary) -> pa.Table:
    row_of = {f: i for i, f in enumerate(result.footprints)}
    names = vocabulary.names
    columns: dict[str, list] = {k: [] for k in ("footprint", "label_ids", "labels", "area_share", "length_m", "count")}
    for chip in chips.column("chip").to_pylist():
        footprint = ChipName.parse(chip).cell.id
        i = row_of[footprint]
        ids = result.label_ids(i)
        columns["footprint"].append(footprint)
        columns["label_ids"].append(ids)
        columns["labels"].append([names[j] for j in ids])
        columns["area_share"].append(result.area_share[i, ids].tolist())
        columns["length_m"].append(result.length_m[i, ids].tolist())
        columns["count"].append(result.count[i, ids].tolist())
    data = {name: chips.column(name) for name in ("chip", "cell", "catalog_id", "date", "class", "valid_fraction",
                                                   "cloud_fraction")}
    data.update(columns)
    return pa.Table.from_pydict({name: data[name] for name in CHIP_SCHEMA.names},
                                schema=with_vocabulary(CHIP_SCHEMA, vocabulary))


def _coverage_table(result: FootprintLabels, vocabulary: Vocabulary) -> pa.Table:
    measured = (result.area_share > 0) | (result.length_m > 0) | (result.count > 0)
    rows, cols = np.nonzero(measured)
    return pa.Table.from_pydict({
        "footprint": [result.footprints[i] for i in rows],
        "label_id": cols.astype(np.int8),
        "label": [vocabulary.names[j] for j in cols],
        "present": result.present[rows, cols],
        "area_share": result.area_share[rows, cols],
        "length_m": result.length_m[rows, cols],
        "count": result.count[rows, cols],
    }, schema=with_vocabulary(COVERAGE_SCHEMA, vocabulary))


def read_chip_index(bucket: Bucket, cell: ArdCell) -> pa.Table:
    """The cell's nodata index table; :class:`LabelError` when chipping has not written it."""
    key = layout.nodata_index_key(cell.id)
    try:
        return pq.read_table(io.BytesIO(bucket.read_bytes(key)))
    except StorageError:
        raise LabelError(f"{bucket.url(key)} does not exist: materialize nodata_index for {cell.id} first") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelError(f"{bucket.url(key)} is not a readable Parquet table ({exc}); "
                         f"materialize nodata_index for {cell.id} again") from None


def label_cell(bucket: Bucket, cell_id: str, vocabulary: Vocabulary) -> CellLabels:
    """Label every chip of the cell and write its tables; returns what was written."""
    started = time.perf_counter()
    cell = ArdCell.parse(cell_id)
    chips = read_chip_index(bucket, cell)
    data = read_osm_data(bucket, cell)
    features = osm_features(data, cell.epsg)
    problems = list(features.problems)
    if not len(features):
        problems.append(f"{cell.id}: osm_data.json holds no tagged OSM features; all its chips are label-free")
    footprints = sorted({ChipName.parse(c).cell.id for c in chips.column("chip").to_pylist()})
    result = label_footprints(features, vocabulary, [ArdCell.parse(f) for f in footprints])
    table = _chip_table(chips, result, vocabulary)
    bucket.write_bytes(coverage_key(cell.id), _parquet_bytes(_coverage_table(result, vocabulary)))
    bucket.write_text(csv_key(cell.id), write_sparse_csv(table.column("chip").to_pylist(),
                                                         table.column("label_ids").to_pylist()))
    bucket.write_bytes(labels_key(cell.id), _parquet_bytes(table))
    return CellLabels(cell.id, table, result, features.kind_counts(), problems, time.perf_counter() - started)


def table_vocabulary(schema: pa.Schema) -> Vocabulary:
    """The vocabulary a labels table was written with."""
    meta = schema.metadata or {}
    if VOCAB_META not in meta:
        raise LabelError("the table carries no vocabulary: it was not written by chip_labels")
    return vocabulary_from_json(meta[VOCAB_META].decode())


def read_cell_labels(bucket: Bucket, cell_id: str) -> pa.Table:
    """The cell's label table; :class:`LabelError` when it is missing or unreadable."""
    return load_cell_labels(bucket, cell_id)[0]


def load_cell_labels(bucket: Bucket, cell_id: str) -> tuple[pa.Table, str]:
    """(the cell's chip labels table, the SHA-256 of its file)."""
    key = labels_key(cell_id)
    try:
        raw = bucket.read_bytes(key)
        return pq.read_table(io.BytesIO(raw)), hashlib.sha256(raw).hexdigest()
    except StorageError:
        raise LabelError(f"{bucket.url(key)} does not exist: materialize chip_labels for {cell_id}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelError(f"{bucket.url(key)} is not a readable Parquet table ({exc}); "
                         f"materialize chip_labels for {cell_id} again") from None


def fingerprint_of(table: pa.Table) -> str | None:
    """The vocabulary fingerprint a label table was written with (None if it has none)."""
    value = (table.schema.metadata or {}).get(FINGERPRINT_META)
    return value.decode() if value else None


__all__ = ["CHIP_SCHEMA", "COVERAGE_SCHEMA", "CellLabels", "LabelError", "coverage_key", "csv_key",
           "fingerprint_of", "label_cell", "labels_key", "load_cell_labels", "with_vocabulary", "read_cell_labels",
           "read_chip_index", "table_vocabulary"]
