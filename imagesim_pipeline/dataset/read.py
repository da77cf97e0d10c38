"""Reading a dataset version: label encodings per split, dense on demand, in bounded memory."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesim_pipeline.dataset.build import read_manifest
from imagesim_pipeline.labels.encoding import dense_from_arrow
from imagesim_pipeline.storage import Bucket, layout


def iter_dense(bucket: Bucket, version: str | None, split: str,
               batch_rows: int = 65_536) -> Iterator[tuple[list[str], np.ndarray]]:
    """Batches of (chip names, dense 0/1 label matrix) of one split, in file order."""
    manifest = read_manifest(bucket, version)
    n = len(manifest.vocabulary.labels)
    with bucket.local_copy(layout.dataset_key(manifest.version, "chips.parquet")) as path:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["chip", "label_ids", "split"]):
            mine = pc.equal(batch.column("split"), split)
            batch = batch.filter(mine)
            if batch.num_rows:
                yield batch.column("chip").to_pylist(), dense_from_arrow(batch.column("label_ids"), n)


def export_dense(bucket: Bucket, version: str | None, split: str, output: str) -> int:
    """Write ``chip,<label 1>,…,<label n>`` 0/1 rows of a split to ``output`` ("-": stdout)."""
    manifest = read_manifest(bucket, version)
    names = manifest.vocabulary.names
    out = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")
    rows = 0
    try:
        out.write(",".join(["chip", *names]) + "\n")
        for chips, matrix in iter_dense(bucket, manifest.version, split):
            for chip, row in zip(chips, matrix, strict=True):
                out.write(chip + "," + ",".join(map(str, row.tolist())) + "\n")
            rows += len(chips)
    finally:
        if out is not sys.stdout:
            out.close()
    return rows


__all__ = ["export_dense", "iter_dense"]
