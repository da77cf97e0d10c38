"""One cell's pair changes and change maps: ``changes/<version>/cells/<zone>/<cell>.parquet``.

The encoder already computes every chip's feature maps on its way to the embedding, so scoring the
pairs there costs only the map arithmetic (no second decode, no second pass through the backbone).
:class:`CellPairScorer` takes a cell's chips place by place as they come out of the encoder, scores
each pair of consecutive acquisitions of a place
(:func:`imagesim_pipeline.changes.spatial.pair_change`) and keeps one row per pair: place, both
chips with their byte counts (a re-chipped chip is a different chip), the change score, the change
map (an 8-bit grey PNG, :func:`imagesim_pipeline.changes.maps.encode_map`) and the scorer's
parameters' fingerprint (a row scored with other parameters, e.g. before an upgrade, is scored again
rather than ranked beside new ones). The rows are written once per cell, atomically, after the
cell's embeddings: one object per cell, not one per place (thousands of small writes would cost more
than the scoring on S3). ``chip_changes`` joins them to the embeddings' pairs, scores any pair they
lack and writes the cell's file again with those added.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from imagesim_pipeline.changes.maps import STORED_DOWNSAMPLE, encode_map
from imagesim_pipeline.changes.scorer import ScorerParams
from imagesim_pipeline.storage import Bucket, StorageError, layout

PairKey = tuple[str, str, int, int]  # chip before, chip after, their byte counts
SCHEMA = pa.schema([("place", pa.string()), ("chip_before", pa.string()), ("chip_after", pa.string()),
                    ("bytes_before", pa.int64()), ("bytes_after", pa.int64()), ("change", pa.float64()),
                    ("map_png", pa.binary()), ("scorer", pa.string())])


def pair_key(before: Mapping, after: Mapping) -> PairKey:
    """The identity of a pair: its two chips and their byte counts (chip-manifest or embeddings rows)."""
    return (before["chip"], after["chip"], int(before["bytes"]), int(after["bytes"]))


def _read(bucket: Bucket, key: str) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(bucket.read_bytes(key)))


def read_cell_changes(bucket: Bucket, version: str, cell_id: str, *, scorer: str,
                      warn: Callable[[str], None] | None = None) -> dict[PairKey, dict]:
    """The cell's pairs scored by the scorer whose parameters have the fingerprint ``scorer`` (pair -> row);
    empty when it has none or they cannot be read (named via ``warn``). Rows of other parameters are left
    out (named via ``warn``), so they are scored again."""
    key = layout.cell_changes_key(version, cell_id)
    try:
        table = _read(bucket, key)
    except StorageError:
        return {}
    except (pa.ArrowInvalid, OSError) as exc:
        if warn:
            warn(f"{bucket.url(key)} is unreadable ({exc}): its pairs are scored again")
        return {}
    rows = table.to_pylist()
    current = [r for r in rows if r.get("scorer") == scorer]
    if len(current) < len(rows) and warn:
        warn(f"{bucket.url(key)}: {len(rows) - len(current)} pair(s) were scored with other change-scorer parameters "
             "(an earlier release): they are scored again")
    return {(r["chip_before"], r["chip_after"], r["bytes_before"], r["bytes_after"]): r for r in current}


def write_cell_changes(bucket: Bucket, version: str, cell_id: str, rows: list[dict]) -> str:
    """Publish the cell's pair rows (one atomic object write); the key."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer, compression="zstd")
    key = layout.cell_changes_key(version, cell_id)
    bucket.write_bytes(key, buffer.getvalue())
    return key


def read_change_map(bucket: Bucket, key: str, chip_before: str, chip_after: str) -> np.ndarray:
    """The change map of a pair, from the cell file ``key`` (a change-table row's ``map``), as 0..1 floats."""
    import pyarrow.compute as pc

    from imagesim_pipeline.changes.maps import ChangeMapError, decode_map

    try:
        table = _read(bucket, key)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ChangeMapError(f"{bucket.url(key)} is unreadable ({exc}): materialize chip_changes again") from None
    hit = table.filter(pc.and_(pc.equal(table["chip_before"], chip_before), pc.equal(table["chip_after"], chip_after)))
    if hit.num_rows == 0:
        raise ChangeMapError(f"{bucket.url(key)} has no change map of {chip_before} -> {chip_after}: "
                             "materialize chip_changes again")
    return decode_map(hit.column("map_png")[0].as_py(), f"the map of {chip_before} -> {chip_after}")


class CellPairScorer:
    """Collects a cell's pair rows: scored from the encoder's output, or kept from an earlier run."""

    def __init__(self, params: ScorerParams | None = None, workers: int = 0) -> None:
        from imagesim_pipeline.changes.spatial import CHIP_PARAMS

        self.params = params or CHIP_PARAMS
        self.workers = workers or os.cpu_count() or 1
        self.rows: list[dict] = []
        self.scored = 0
        self.kept = 0

    def keep(self, row: dict) -> None:
        """An unchanged pair's row from the earlier run."""
        self.rows.append(row)
        self.kept += 1

    def score_places(self, places: Sequence[tuple[str, Sequence[Mapping], Sequence[Mapping[str, np.ndarray]],
                                                   Sequence[np.ndarray]]]) -> None:
        """Score the consecutive pairs of each (place, its chips (manifest rows sorted by date), each chip's
        feature maps (output name -> (C, h, w)), each chip's input pixels), on every core: the encoder is
        idle meanwhile, and numpy, scipy and zlib release the GIL for the heavy work."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for rows in pool.map(self._score_place, places):
                self.rows += rows
                self.scored += len(rows)

    def _score_place(self, item: tuple[str, list[Mapping], list[Mapping[str, np.ndarray]], list[np.ndarray]]
                     ) -> list[dict]:
        from imagesim_pipeline.changes.spatial import pair_change

        place, chips, maps, rgb = item
        rows = []
        for i in range(len(chips) - 1):
            scored = pair_change(maps[i], maps[i + 1], rgb[i], rgb[i + 1], self.params)
            rows.append(pair_row(place, pair_key(chips[i], chips[i + 1]), scored.score, scored.change,
                                 self.params.fingerprint))
        return rows


def pair_row(place: str, key: PairKey, change: float, change_map: np.ndarray, scorer: str) -> dict:
    """A row of a cell's change file (``scorer``: the fingerprint of the parameters that scored it)."""
    return {"place": place, "chip_before": key[0], "chip_after": key[1], "bytes_before": key[2],
            "bytes_after": key[3], "change": float(change), "map_png": encode_map(change_map, STORED_DOWNSAMPLE),
            "scorer": scorer}


__all__ = ["CellPairScorer", "PairKey", "SCHEMA", "pair_key", "pair_row", "read_cell_changes", "read_change_map",
           "write_cell_changes"]
