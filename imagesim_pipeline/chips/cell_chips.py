"""Chip every acquisition of one delivery cell into the bucket: all of the cell's chips change together.

Chips are first written to the cell's staging area ``chips/<zone>/_staging/<cell>/``; a run that
fails there (a truncated re-delivery, a kill) leaves the published chips, manifest and nodata
index untouched. Then the commit: the new manifest is written to the staging area as
``COMMIT.json`` (the journal), each staged chip is moved to ``chips/<zone>/<name>.jpg``, chips of
the cell no longer produced are deleted, the manifest ``chips/<zone>/_manifests/<cell>.json`` is
written and the staging area removed. The next run of the cell first finishes a commit that a
crash interrupted (its journal says what to publish) or discards an unfinished staging area and
the temporaries of interrupted writes. Readers use the manifest, never a bare listing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic validates typing.TypedDict only from Python 3.12

from imagesim_pipeline.ard.discovery import CellDelivery
from imagesim_pipeline.chips.chipper import ChipError, ChipJob, chip_acquisition, classify
from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.storage import Bucket, MissingObjectError, layout
from imagesim_pipeline.storage.records import read_record, write_record

JOURNAL = "COMMIT.json"

# One chip of the manifest: a table row (the nodata index and the embeddings take it as is), so a dict;
# "class" is a Python keyword, hence the functional form.
ChipRow = TypedDict("ChipRow", {
    "chip": str, "cell": str, "catalog_id": str, "date": str, "zoom": int, "class": str,
    "valid_fraction": float, "cloud_fraction": float | None, "bytes": int, "written": bool,
})


class ChipManifest(BaseModel):
    """``chips/<zone>/_manifests/<cell>.json`` (and the commit journal): every chip of the cell's last run."""

    cell: str
    zoom: int
    quality: int
    size: int | None
    chips: list[ChipRow]

    def written(self) -> list[ChipRow]:
        """The rows of chips that were written (chips without any data are listed but not written)."""
        return [r for r in self.chips if r["written"]]


@dataclass
class Recovery:
    """What the start of a cell's run found left by an earlier one."""

    finished_commit: bool = False  # a commit interrupted by a crash, completed now
    discarded_staged: int = 0  # chips of a run that never committed
    temporaries: int = 0  # files of interrupted atomic writes

    def __str__(self) -> str:
        parts = []
        if self.finished_commit:
            parts.append("finished the commit an interrupted run left")
        if self.discarded_staged:
            parts.append(f"discarded {self.discarded_staged} staged chip(s) of a run that did not finish")
        if self.temporaries:
            parts.append(f"removed {self.temporaries} temporary file(s) of interrupted writes")
        return "; ".join(parts) or "nothing to recover"


@dataclass
class CellChips:
    """What chipping a cell did: the manifest rows, timings, stale chips deleted, what it recovered."""

    cell: str
    zoom: int
    rows: list[ChipRow] = field(default_factory=list)
    seconds: float = 0.0
    deleted_stale: int = 0
    recovery: Recovery = field(default_factory=Recovery)

    @property
    def written(self) -> int:
        """How many chips were written."""
        return sum(1 for r in self.rows if r["written"])

    def histogram(self) -> dict[str, int]:
        """Written chips per nodata class."""
        counts: dict[str, int] = {}
        for r in self.rows:
            if r["written"]:
                counts[r["class"]] = counts.get(r["class"], 0) + 1
        return counts


def _clouds(bucket: Bucket, key: str | None) -> tuple[bytes, ...]:
    if not key:
        return ()
    import geopandas as gpd

    with bucket.local_copy(key) as path:
        frame = gpd.read_file(path)
    return tuple(g.wkb for g in frame.geometry if g is not None and not g.is_empty)


def chip_cell(bucket: Bucket, delivery: CellDelivery, *, zoom: int = 17, quality: int = 90, size: int | None = None,
              processes: int = 1, write_empty: bool = False,
              progress: Callable[[str], None] | None = None) -> CellChips:
    """Chip all acquisitions of ``delivery`` into ``bucket``; returns the manifest rows."""
    started = time.perf_counter()
    cell_id = delivery.cell.id
    result = CellChips(cell_id, zoom)
    result.recovery = recover_cell(bucket, cell_id)
    staging = layout.chip_staging_prefix(cell_id)
    try:
        _stage(bucket, delivery, result, zoom, quality, size, processes, write_empty, progress)
    except BaseException:
        with contextlib.suppress(Exception):  # nothing published changed; a kill leaves this to the next run
            bucket.delete_prefix(staging)
        raise
    manifest = ChipManifest(cell=cell_id, zoom=zoom, quality=quality, size=size, chips=result.rows)
    write_record(bucket, staging + JOURNAL, manifest)  # from here on the commit is decided
    result.deleted_stale = _publish(bucket, cell_id, manifest)
    result.seconds = time.perf_counter() - started
    return result


def _stage(bucket: Bucket, delivery: CellDelivery, result: CellChips, zoom: int, quality: int, size: int | None,
           processes: int, write_empty: bool, progress: Callable[[str], None] | None) -> None:
    """Chip every acquisition into the cell's staging area, appending the manifest rows to ``result``."""
    cell_id = delivery.cell.id
    staging = layout.chip_staging_prefix(cell_id)
    options = tuple(bucket.gdal_options().items())
    for acq in sorted(delivery.acquisitions, key=lambda a: (a.date, a.catalog_id)):
        job = ChipJob(bucket.gdal_path(acq.visual_key), delivery.cell, acq.catalog_id, zoom, quality, size,
                      write_empty, _clouds(bucket, acq.assets.get("cloud-mask")), options)
        with bucket.rasterio_env():
            for chip in chip_acquisition(job, processes):
                if chip.jpeg is not None:
                    bucket.write_bytes(staging + chip.name, chip.jpeg)
                result.rows.append(ChipRow({
                    "chip": chip.name, "cell": cell_id, "catalog_id": acq.catalog_id,
                    "date": acq.date.isoformat(), "zoom": zoom, "class": classify(chip.valid_fraction),
                    "valid_fraction": round(chip.valid_fraction, 6),
                    "cloud_fraction": None if chip.cloud_fraction is None else round(chip.cloud_fraction, 6),
                    "bytes": len(chip.jpeg) if chip.jpeg else 0, "written": chip.jpeg is not None,
                }))
        if progress:
            progress(f"{cell_id} {acq.catalog_id}: {sum(r['written'] for r in result.rows)} chips so far")


def _publish(bucket: Bucket, cell_id: str, manifest: ChipManifest) -> int:
    """Move the staged chips into place, delete stale ones, write the manifest, drop the staging area.

    Idempotent: run again after a crash it completes what is left. Returns the stale chips deleted."""
    staging = layout.chip_staging_prefix(cell_id)
    staged = {obj.key.rsplit("/", 1)[1] for obj in bucket.list(staging)}
    produced = {r["chip"] for r in manifest.written()}
    for name in sorted(produced):
        if name in staged:
            bucket.move(staging + name, chip_key(ChipName.parse(name)))
        elif not bucket.exists(chip_key(ChipName.parse(name))):
            raise ChipError(f"commit of {cell_id}: chip {name} is neither staged nor published; "
                            f"materialize chips for {cell_id} again")
    stale = 0
    for obj in list(bucket.list(layout.chip_cell_prefix(cell_id))):
        if obj.key.endswith(".jpg") and obj.key.rsplit("/", 1)[1] not in produced:
            bucket.delete(obj.key)
            stale += 1
    write_record(bucket, layout.chip_manifest_key(cell_id), manifest)
    bucket.delete_prefix(staging)
    return stale


def recover_cell(bucket: Bucket, cell_id: str) -> Recovery:
    """Finish or discard what an interrupted run of ``cell_id`` left; see the module docstring."""
    recovery = Recovery()
    staging = layout.chip_staging_prefix(cell_id)
    recovery.temporaries = (bucket.clean_temporaries(layout.chip_cell_prefix(cell_id))
                            + bucket.clean_temporaries(staging))
    journal = read_record(bucket, staging + JOURNAL, ChipManifest,
                          f"delete {bucket.url(staging)} and materialize chips for {cell_id} again")
    if journal is not None:
        _publish(bucket, cell_id, journal)
        recovery.finished_commit = True
    else:
        recovery.discarded_staged = bucket.delete_prefix(staging)
    return recovery


def read_manifest(bucket: Bucket, cell_id: str) -> ChipManifest:
    """The cell's chip manifest; :class:`MissingObjectError` when the cell has none."""
    fix = f"materialize chips for {cell_id} again"
    manifest = read_record(bucket, layout.chip_manifest_key(cell_id), ChipManifest, fix)
    if manifest is None:
        raise MissingObjectError(f"{bucket.url(layout.chip_manifest_key(cell_id))} does not exist: {fix}")
    return manifest
