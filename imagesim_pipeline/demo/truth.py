"""The demo world's change ground truth, read without the renderer: which place pairs lost buildings.

``demo/changes.parquet`` (written by :func:`imagesim_pipeline.demo.world.build_world`) has one row
per place and pair of acquisitions where buildings vanished, with their count and their share of
the place's area. :class:`ChangeTruth` answers, for a row of the change table, whether and how much
vanished there; ``make demo`` and ``benchmarks/bench_changes.py`` grade the change table with it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa

from imagesim_pipeline.storage import Bucket

CHANGES_KEY = "demo/changes.parquet"
STRICT_SHARE = 0.05  # "the place changed": at least this share of its area vanished


def read_changes(bucket: Bucket) -> pa.Table:
    """The demo world's change ground truth (``demo/changes.parquet``)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(bucket.read_bytes(CHANGES_KEY)))


@dataclass(frozen=True)
class Vanished:
    """Buildings removed from a place between two dates, and the share of its area they covered."""
    buildings: int
    share: float  # of the place's area


class ChangeTruth:
    """What vanished per (place, catalog before, catalog after), from ``demo/changes.parquet``."""

    def __init__(self, table: pa.Table) -> None:
        self.rows = {(r["place"], r["catalog_id_before"], r["catalog_id_after"]):
                     Vanished(int(r["vanished_buildings"]), float(r["vanished_share"])) for r in table.to_pylist()}

    @classmethod
    def from_bucket(cls, bucket: Bucket) -> ChangeTruth | None:
        """The truth of a demo bucket; None for a bucket that is not a demo world."""
        return cls(read_changes(bucket)) if bucket.exists(CHANGES_KEY) else None

    def of(self, row: dict) -> Vanished:
        """What vanished in a change-table row (place, catalog_before, catalog_after); nothing: 0 buildings."""
        return self.rows.get((row["place"], row["catalog_before"], row["catalog_after"]), Vanished(0, 0.0))

    def hits(self, rows: list[dict]) -> int:
        """How many of ``rows`` are places where some building vanished."""
        return sum(1 for r in rows if self.of(r).buildings > 0)


__all__ = ["CHANGES_KEY", "STRICT_SHARE", "ChangeTruth", "Vanished", "read_changes"]
