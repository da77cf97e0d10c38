"""Chip every acquisition of one delivery cell into the bucket, atomically per cell.

Chips are written to ``chips/<zone>/<name>.jpg`` (each write atomic); then chips of the cell
left from an earlier run and no longer produced are deleted; last, the cell's manifest
``chips/<zone>/_manifests/<cell>.json`` (chip, class, fractions, bytes) is written. The
manifest is the completion marker: readers use it, never a bare listing, so a re-run that
fails half-way leaves the previous manifest describing chips that still exist or were
replaced by identical names.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from imagesim_pipeline.ard.discovery import CellDelivery
from imagesim_pipeline.chips.chipper import ChipJob, chip_acquisition, classify
from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.storage import Bucket

MANIFEST_DIR = "_manifests"


def manifest_key(cell_id: str) -> str:
    return f"chips/{cell_id[1:3]}/{MANIFEST_DIR}/{cell_id}.json"


@dataclass
class CellChips:
    cell: str
    zoom: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    deleted_stale: int = 0

    @property
    def written(self) -> int:
        return sum(1 for r in self.rows if r["written"])

    def histogram(self) -> dict[str, int]:
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
    result = CellChips(delivery.cell.id, zoom)
    options = tuple(bucket.gdal_options().items())
    for acq in sorted(delivery.acquisitions, key=lambda a: (a.date, a.catalog_id)):
        job = ChipJob(bucket.gdal_path(acq.visual_key), delivery.cell, acq.catalog_id, zoom, quality, size,
                      write_empty, _clouds(bucket, acq.assets.get("cloud-mask")), options)
        with bucket.rasterio_env():
            for chip in chip_acquisition(job, processes):
                if chip.jpeg is not None:
                    bucket.write_bytes(chip_key(ChipName.parse(chip.name)), chip.jpeg)
                result.rows.append({
                    "chip": chip.name, "cell": delivery.cell.id, "catalog_id": acq.catalog_id,
                    "date": acq.date.isoformat(), "zoom": zoom, "class": classify(chip.valid_fraction),
                    "valid_fraction": round(chip.valid_fraction, 6),
                    "cloud_fraction": None if chip.cloud_fraction is None else round(chip.cloud_fraction, 6),
                    "bytes": len(chip.jpeg) if chip.jpeg else 0, "written": chip.jpeg is not None,
                })
        if progress:
            progress(f"{delivery.cell.id} {acq.catalog_id}: {sum(r['written'] for r in result.rows)} chips so far")
    produced = {r["chip"] for r in result.rows if r["written"]}
    prefix = f"chips/{delivery.cell.zone:02d}/{delivery.cell.id}"
    for obj in list(bucket.list(prefix)):
        if obj.key.endswith(".jpg") and obj.key.rsplit("/", 1)[1] not in produced:
            bucket.delete(obj.key)
            result.deleted_stale += 1
    result.seconds = time.perf_counter() - started
    bucket.write_text(manifest_key(delivery.cell.id), json.dumps(
        {"cell": delivery.cell.id, "zoom": zoom, "quality": quality, "size": size, "chips": result.rows}))
    return result


def read_manifest(bucket: Bucket, cell_id: str) -> dict[str, Any]:
    return json.loads(bucket.read_text(manifest_key(cell_id)))
