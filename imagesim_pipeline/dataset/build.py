"""The training dataset: labelled chips of every cell, selected and split by spatial blocks.

One pass over the per-cell label tables (one cell in memory at a time) writes, under
``datasets/<version>/``:

* ``chips.parquet``   every selected chip: labels with coverage, nodata class, zone, block, split
* ``train.csv``, ``val.csv``, ``test.csv``   the sparse encodings (``chip,labels``)
* ``sparse_label_encodings.csv``   every kept chip in one file: the reference's name and format
* ``vocabulary.json`` label ids, names and rules
* ``manifest.json``   config, counts, vocabulary, input and output content hashes; written last,
  it marks the version complete. ``datasets/latest.json`` then points at the version.

The default version is a hash of the vocabulary, the config and the input tables, so building
again from the same inputs rewrites the same version.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesim_pipeline.dataset.config import DatasetConfig
from imagesim_pipeline.dataset.manifest import (
    MANIFEST,
    DatasetCounts,
    DatasetFile,
    DatasetInput,
    DatasetManifest,
    LatestDataset,
    SkippedCell,
    StoredVocabulary,
)
from imagesim_pipeline.dataset.splits import SPLITS, block_of, split_of, unit_hash
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.labels.cell_labels import (
    CHIP_SCHEMA,
    LabelError,
    fingerprint_of,
    load_cell_labels,
    with_vocabulary,
)
from imagesim_pipeline.labels.encoding import HEADER_LINE, csv_line
from imagesim_pipeline.labels.vocabulary import Vocabulary
from imagesim_pipeline.storage import Bucket, StorageError, layout
from imagesim_pipeline.storage.records import CorruptRecordError, read_record, write_record

ALL_CHIPS_CSV = "sparse_label_encodings.csv"  # the reference's file: every kept chip
DATASET_SCHEMA = CHIP_SCHEMA.append(pa.field("zone", pa.int8())).append(pa.field("block", pa.string())) \
    .append(pa.field("split", pa.string()))


class DatasetError(ImagesimError):
    """The dataset could not be built or read; the message says what to do."""


@dataclass
class DatasetResult:
    """A built (or unchanged) version and its manifest."""

    version: str
    manifest: DatasetManifest
    seconds: float
    unchanged: bool = False  # the stored version already held exactly this content


def indexed_cells(bucket: Bucket) -> list[str]:
    """Cells that have a nodata index table (and so should have labels)."""
    return sorted(o.key.rsplit("/", 1)[1][: -len(".parquet")] for o in bucket.list(layout.NODATA_INDEX)
                  if o.key.endswith(".parquet"))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _select(table: pa.Table, config: DatasetConfig) -> tuple[pa.Table, Counter]:
    """Keep the chips the config asks for; count why the others went."""
    dropped: Counter = Counter()
    keep_class = pc.is_in(table.column("class"), value_set=pa.array(config.keep_classes))
    dropped["nodata_class"] = int(table.num_rows - pc.sum(keep_class).as_py())
    dropped["cloud_unknown_kept"] = int(pc.sum(pc.and_(keep_class, pc.is_null(table.column("cloud_fraction")))).as_py()
                                        or 0)  # no cloud mask delivered: counted as clear
    clear = pc.less_equal(pc.fill_null(table.column("cloud_fraction"), 0.0), config.max_cloud_fraction)
    dropped["cloudy"] = int(pc.sum(pc.and_(keep_class, pc.invert(clear))).as_py())
    eligible = pc.and_(keep_class, clear)
    labelled = pc.greater(pc.list_value_length(table.column("label_ids")), 0)
    lucky = pa.array([unit_hash(f, 1_000_003) < config.unlabelled_share
                      for f in table.column("footprint").to_pylist()], pa.bool_())
    wanted = pc.or_(labelled, lucky)
    dropped["label_free"] = int(pc.sum(pc.and_(eligible, pc.invert(wanted))).as_py())
    return table.filter(pc.and_(eligible, wanted)), dropped


def _verify_chips(bucket: Bucket, cell: str, table: pa.Table) -> tuple[pa.Table, dict[str, list[str]]]:
    """Keep the chips that are published as the cell's chip manifest describes them (present, with the
    manifest's byte count: one listing of the cell, no reads); the others by reason."""
    from imagesim_pipeline.chips.cell_chips import read_manifest as read_chip_manifest

    try:
        rows = read_chip_manifest(bucket, cell).written()
    except StorageError:
        rows = []
    expected = {r["chip"]: r["bytes"] for r in rows}
    present = {o.key.rsplit("/", 1)[1]: o.size for o in bucket.list(layout.chip_cell_prefix(cell))}
    bad: dict[str, list[str]] = {}
    keep = []
    for chip in table.column("chip").to_pylist():
        name = chip if chip.endswith(".jpg") else f"{chip}.jpg"
        if name not in present:
            reason = "chip_missing"
        elif expected.get(name) != present[name]:
            reason = "chip_size_differs_from_manifest"
        else:
            keep.append(True)
            continue
        keep.append(False)
        bad.setdefault(reason, []).append(name)
    return (table.filter(pa.array(keep, pa.bool_())) if bad else table), bad


def build_dataset(bucket: Bucket, vocabulary: Vocabulary, config: DatasetConfig,
                  progress: Callable[[str], None] = lambda _: None) -> DatasetResult:
    """Build (or rebuild) a dataset version from the bucket's label tables."""
    config.validate()
    started = time.perf_counter()
    cells = indexed_cells(bucket)
    if not cells:
        raise DatasetError(f"no nodata index tables under {bucket.url(layout.NODATA_INDEX)}: "
                           "run datamaker_job for some cells first")
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
    chips_per_split: Counter = Counter()
    label_free: Counter = Counter()
    no_cloud_mask = 0
    blocks: dict[str, set[str]] = {s: set() for s in SPLITS}
    dropped: Counter = Counter()
    inputs: list[DatasetInput] = []
    skipped: list[SkippedCell] = []
    names = vocabulary.names
    with tempfile.TemporaryDirectory(prefix="imagesim-dataset-") as tmp:
        out = Path(tmp)
        schema = with_vocabulary(DATASET_SCHEMA, vocabulary)
        writer = pq.ParquetWriter(out / "chips.parquet", schema, compression="zstd")
        csvs = {s: open(out / f"{s}.csv", "w", encoding="utf-8") for s in SPLITS}
        csvs["all"] = open(out / ALL_CHIPS_CSV, "w", encoding="utf-8")
        try:
            for fh in csvs.values():
                fh.write(HEADER_LINE)
            for i, cell in enumerate(cells, 1):
                try:
                    table, digest = load_cell_labels(bucket, cell)
                except LabelError as exc:
                    skipped.append(SkippedCell(cell=cell, reason=str(exc)))
                    continue
                if fingerprint_of(table) != vocabulary.fingerprint:
                    skipped.append(SkippedCell(cell=cell, reason=f"labelled with vocabulary {fingerprint_of(table)}, "
                                               f"not {vocabulary.fingerprint}: materialize chip_labels for {cell} "
                                               "again"))
                    continue
                selected, why = _select(table, config)
                selected, unverified = _verify_chips(bucket, cell, selected)
                for reason, chips in unverified.items():
                    why[reason] = len(chips)
                    progress(f"{cell}: {len(chips)} chip(s) dropped, {reason.replace('_', ' ')}: "
                             f"{', '.join(chips[:3])}{' …' if len(chips) > 3 else ''}")
                inputs.append(DatasetInput(cell=cell, chips=table.num_rows, sha256=digest,
                                           unverified=unverified or None))
                no_cloud_mask += why.pop("cloud_unknown_kept")
                dropped.update(why)
                footprint = selected.column("footprint").to_pylist()
                block = [block_of(f, config.block_zoom) for f in footprint]
                split = [split_of(b, config.fractions, config.seed) for b in block]
                batch = selected.append_column("zone", pa.array([int(f[1:3]) for f in footprint], pa.int8())) \
                    .append_column("block", pa.array(block, pa.string())) \
                    .append_column("split", pa.array(split, pa.string()))
                writer.write_table(batch.cast(schema))
                for chip, ids, s, b in zip(selected.column("chip").to_pylist(),
                                           selected.column("label_ids").to_pylist(), split, block, strict=True):
                    line = csv_line(chip, ids)
                    csvs[s].write(line)
                    csvs["all"].write(line)
                    counts[s].update(names[j] for j in ids)
                    chips_per_split[s] += 1
                    label_free[s] += not ids
                    blocks[s].add(b)
                progress(f"[{i}/{len(cells)}] {cell}: {selected.num_rows} of {table.num_rows} chips selected")
        finally:
            writer.close()
            for fh in csvs.values():
                fh.close()
        if not inputs:
            raise DatasetError("no usable chip_labels among the cells: " + "; ".join(
                f"{s.cell}: {s.reason}" for s in skipped[:5]) + (" …" if len(skipped) > 5 else "")
                + f". The latest dataset stays {_latest_or_none(bucket)}.")
        if not sum(chips_per_split.values()):
            raise DatasetError(f"no chip passes the selection (dropped: {dict(dropped)}); widen keep_classes, "
                               f"unlabelled_share or max_cloud_fraction. The latest dataset stays "
                               f"{_latest_or_none(bucket)}.")
        version = config.version or _auto_version(vocabulary, config, inputs)
        current = _stored_manifest(bucket, version)
        if current and _same_content(current, vocabulary, config, inputs):
            # Nothing changed: keep the stored version online rather than rewriting it.
            write_record(bucket, layout.DATASETS_LATEST, LatestDataset(version=version))
            return DatasetResult(version, current, time.perf_counter() - started, unchanged=True)
        # Rebuilding a version: drop its completion marker first, so readers never pair an old
        # manifest with half-replaced files.
        if bucket.exists(layout.dataset_key(version, MANIFEST)):
            bucket.delete(layout.dataset_key(version, MANIFEST))
        (out / "vocabulary.json").write_text(vocabulary.to_json())
        files = {}
        for path in sorted(out.iterdir()):
            files[path.name] = DatasetFile(sha256=_sha256_file(path), bytes=path.stat().st_size)
            bucket.upload_file(path, layout.dataset_key(version, path.name))
    manifest = DatasetManifest(
        version=version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        config=replace(config, version=version),
        vocabulary=StoredVocabulary.model_validate_json(vocabulary.to_json()),
        counts=DatasetCounts(chips=sum(chips_per_split.values()), by_split={s: chips_per_split[s] for s in SPLITS},
                             blocks_by_split={s: len(blocks[s]) for s in SPLITS},
                             label_free_by_split={s: label_free[s] for s in SPLITS},
                             dropped=dict(dropped), kept_without_cloud_mask=no_cloud_mask),
        label_counts={s: {n: counts[s][n] for n in names} for s in SPLITS},
        inputs=inputs,
        skipped_cells=skipped,
        files=files,
    )
    write_record(bucket, layout.dataset_key(version, MANIFEST), manifest)
    write_record(bucket, layout.DATASETS_LATEST, LatestDataset(version=version))
    return DatasetResult(version, manifest, time.perf_counter() - started)


def _latest_or_none(bucket: Bucket) -> str:
    try:
        return repr(latest_version(bucket))
    except DatasetError:
        return "none"


def _stored_manifest(bucket: Bucket, version: str) -> DatasetManifest | None:
    """The version's manifest, None when it has none or one this code cannot read (then it is rebuilt)."""
    try:
        return read_record(bucket, layout.dataset_key(version, MANIFEST), DatasetManifest, "")
    except CorruptRecordError:
        return None


def _same_content(manifest: DatasetManifest, vocabulary: Vocabulary, config: DatasetConfig,
                  inputs: list[DatasetInput]) -> bool:
    return (manifest.vocabulary.fingerprint == vocabulary.fingerprint
            and manifest.config.selection() == config.selection() and manifest.inputs == inputs
            and ALL_CHIPS_CSV in manifest.files)  # versions written before the file existed are rebuilt


def _auto_version(vocabulary: Vocabulary, config: DatasetConfig, inputs: list[DatasetInput]) -> str:
    key = json.dumps({"vocabulary": vocabulary.fingerprint, "config": config.selection(),
                      "inputs": [(i.cell, i.sha256) + ((i.unverified,) if i.unverified is not None else ())
                                 for i in inputs]}, sort_keys=True)
    return "ds-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def latest_version(bucket: Bucket) -> str:
    """The version ``datasets/latest.json`` names; :class:`DatasetError` when there is none."""
    latest = read_record(bucket, layout.DATASETS_LATEST, LatestDataset, "materialize training_dataset again")
    if latest is None:
        raise DatasetError(f"no dataset in {bucket.url(layout.DATASETS)}: materialize training_dataset first")
    return latest.version


def read_manifest(bucket: Bucket, version: str | None = None) -> DatasetManifest:
    """The manifest of ``version`` (default: the latest); :class:`DatasetError` when the version is incomplete."""
    version = version or latest_version(bucket)
    key = layout.dataset_key(version, MANIFEST)
    manifest = read_record(bucket, key, DatasetManifest, f"materialize training_dataset (version {version}) again")
    if manifest is None:
        raise DatasetError(f"{bucket.url(key)} does not exist: dataset version {version!r} is missing or "
                           "incomplete; materialize training_dataset again")
    return manifest


__all__ = ["DATASET_SCHEMA", "DatasetConfig", "DatasetError", "DatasetResult", "build_dataset",
           "indexed_cells", "latest_version", "read_manifest"]
