"""The nodata index: every chip as "no data" | "partial data" | "all data".

* Per cell, from the chip manifest (classes computed from the raster mask at chipping time):
  ``nodata-index/<zone>/<cell>.parquet`` with chip, cell, catalog id, date, zoom, class,
  valid and cloud fractions, bytes.
* For the whole bucket: ``nodata-index.json`` (chip file name -> class), the reference format,
  rebuilt from the per-cell tables.
* For a folder of existing chips (the reference's ``chip.py --filename``): classes from the
  JPEG pixels, decoded at reduced size, with a tolerance for JPEG noise around black no-data.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import simplejpeg

from imagesim_pipeline.chips.chipper import classify
from imagesim_pipeline.storage import Bucket, layout

if TYPE_CHECKING:
    from imagesim_pipeline.chips.cell_chips import ChipManifest

SCHEMA = pa.schema([
    ("chip", pa.string()), ("cell", pa.string()), ("catalog_id", pa.string()), ("date", pa.string()),
    ("zoom", pa.int8()), ("class", pa.string()), ("valid_fraction", pa.float32()),
    ("cloud_fraction", pa.float32()), ("bytes", pa.int32()),
])


def write_cell_index(bucket: Bucket, manifest: ChipManifest) -> tuple[str, pa.Table]:
    """The cell's table of written chips, stored as Parquet; returns (key, table)."""
    rows = [{k: v for k, v in r.items() if k in SCHEMA.names} for r in manifest.written()]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    key = layout.nodata_index_key(manifest.cell)
    bucket.write_bytes(key, sink.getvalue())
    return key, table


def _tables(bucket: Bucket) -> dict[str, object]:
    return {o.key: o.modified for o in bucket.list(layout.NODATA_INDEX) if o.key.endswith(".parquet")}


def rebuild_index_json(bucket: Bucket, attempts: int = 5) -> int:
    """Rewrite ``nodata-index.json`` from every per-cell table; returns the chip count.

    Runs of other cells may add tables meanwhile; after writing, the tables are listed again and
    the index rebuilt until it covers what it saw, so the last writer always leaves it complete.
    """
    seen = _tables(bucket)
    for _ in range(attempts):
        index: dict[str, str] = {}
        for key in sorted(seen):
            table = pq.read_table(io.BytesIO(bucket.read_bytes(key)), columns=["chip", "class"])
            index.update(zip(table.column("chip").to_pylist(), table.column("class").to_pylist(), strict=True))
        bucket.write_text(layout.NODATA_INDEX_JSON, json.dumps(index, sort_keys=True, indent=0))
        now = _tables(bucket)
        if now == seen:
            break
        seen = now
    return len(index)


# --- classifying an existing chip folder from its pixels --------------------------------------
# At 1/4 scale each pixel is the mean of a 4x4 block: only a wholly black block (a no-data area,
# plus JPEG noise) stays this dark, while scattered dark pixels of real shadows average out.
BLACK_LEVEL = 4
EDGE_TOLERANCE = 0.002  # share of pixels that may disagree before "all"/"no data" becomes "partial"


def classify_jpeg(data: bytes, name: str = "") -> tuple[str, float]:
    """(class, valid fraction) of a JPEG chip from its pixels, decoded at 1/4 scale.

    No-data slivers narrower than about 4 pixels are not seen; the mask-based index that
    chipping writes has no such limit.
    """
    try:
        width, height, _, _ = simplejpeg.decode_jpeg_header(data)
        scale = 4 if min(width, height) >= 64 else 1  # tiny chips are decoded whole
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True,
                                        min_width=max(1, width // scale), min_height=max(1, height // scale))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"{name or 'chip'}: not a readable JPEG ({exc})") from None
    valid = float((pixels.max(axis=2) > BLACK_LEVEL).mean())
    if valid <= EDGE_TOLERANCE:
        return classify(0.0), valid
    if valid >= 1 - EDGE_TOLERANCE:
        return classify(1.0), valid
    return classify(valid), valid


def classify_chip_folder(chip_dir: str | os.PathLike[str], out_file: str | os.PathLike[str],
                         progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, str], list[str]]:
    """Classify every ``*.jpg`` in ``chip_dir`` (read only) and write the index JSON atomically.

    Returns (index, problems); unreadable files are problems, not failures.
    """
    folder = Path(chip_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such chip folder (give the folder the chips were written to)")
    # hidden files are never chips: ``.imagesim-tmp-*`` are writes a killed run left behind
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg" and not p.name.startswith("."))
    index: dict[str, str] = {}
    problems: list[str] = []
    for i, name in enumerate(names, 1):
        try:
            index[name] = classify_jpeg((folder / name).read_bytes(), str(folder / name))[0]
        except ValueError as exc:
            problems.append(str(exc))
        if progress and (i % 200 == 0 or i == len(names)):
            progress(i, len(names))
    out = Path(out_file)
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_text(json.dumps(index, sort_keys=True, indent=0))
    os.replace(tmp, out)
    return index, problems


def class_histogram(classes: Iterable[str]) -> dict[str, int]:
    """Chips per class, for reports."""
    values, counts = np.unique(np.asarray(list(classes), dtype=object).astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}
