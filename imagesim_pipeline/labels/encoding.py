"""Label encodings: sparse (``chip,labels`` CSV with space-separated label ids) and dense (0/1 matrix)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

import numpy as np

CSV_HEADER = ("chip", "labels")


HEADER_LINE = ",".join(CSV_HEADER) + "\n"


def csv_line(chip: str, label_ids: Sequence[int]) -> str:
    """One line of the reference's sparse encoding: ``chip,<ids separated by spaces>``."""
    return f"{chip},{' '.join(map(str, label_ids))}\n"


def write_sparse_csv(chips: Iterable[str], label_ids: Iterable[Sequence[int]]) -> str:
    """The whole sparse CSV, header first."""
    return HEADER_LINE + "".join(csv_line(c, ids) for c, ids in zip(chips, label_ids, strict=True))


def read_sparse_csv(text: str, n_labels: int | None = None) -> dict[str, list[int]]:
    """chip -> label ids; rejects a wrong header, a malformed line, or an id outside the vocabulary."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != CSV_HEADER:
        raise ValueError(f"not a sparse label CSV: header {header!r}, expected {','.join(CSV_HEADER)}")
    out: dict[str, list[int]] = {}
    for line, row in enumerate(reader, 2):
        if len(row) != 2:
            raise ValueError(f"line {line}: expected 2 fields (chip,labels), got {len(row)}")
        try:
            ids = [int(v) for v in row[1].split()]
        except ValueError:
            raise ValueError(f"line {line}: labels {row[1]!r} are not space-separated integers") from None
        if n_labels is not None and any(not 0 <= i < n_labels for i in ids):
            raise ValueError(f"line {line}: label id outside 0..{n_labels - 1} in {row[1]!r}")
        out[row[0]] = ids
    return out


def dense(label_ids: Sequence[Sequence[int]], n_labels: int) -> np.ndarray:
    """The (chips x labels) 0/1 matrix of sparse label ids, as uint8."""
    matrix = np.zeros((len(label_ids), n_labels), dtype=np.uint8)
    rows = np.repeat(np.arange(len(label_ids)), [len(ids) for ids in label_ids])
    cols = np.fromiter((i for ids in label_ids for i in ids), dtype=np.int64, count=len(rows))
    matrix[rows, cols] = 1
    return matrix


def dense_from_arrow(list_array, n_labels: int) -> np.ndarray:
    """Dense 0/1 matrix from a pyarrow ``list<int>`` array (no Python loop over rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(list_array, pa.ChunkedArray):
        list_array = list_array.combine_chunks()
    rows = pc.list_parent_indices(list_array).to_numpy()
    cols = pc.list_flatten(list_array).to_numpy(zero_copy_only=False).astype(np.int64)
    matrix = np.zeros((len(list_array), n_labels), dtype=np.uint8)
    matrix[rows, cols] = 1
    return matrix


__all__ = ["CSV_HEADER", "HEADER_LINE", "csv_line", "dense", "dense_from_arrow", "read_sparse_csv", "write_sparse_csv"]
