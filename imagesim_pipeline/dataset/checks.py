"""Checks of a dataset version: spatial leakage between splits, and label support per split."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesim_pipeline.dataset.build import read_manifest
from imagesim_pipeline.dataset.manifest import DatasetManifest
from imagesim_pipeline.storage import Bucket, layout


@dataclass
class LeakageReport:
    """Whether any block or place of the dataset lies in more than one split."""

    chips: int
    blocks: int
    footprints: int
    leaking_blocks: list[str] = field(default_factory=list)  # blocks whose chips lie in more than one split
    leaking_footprints: list[str] = field(default_factory=list)  # places in more than one split

    @property
    def ok(self) -> bool:
        """Whether no block and no place leaks across splits."""
        return not self.leaking_blocks and not self.leaking_footprints


def _multi_split(table: pa.Table, key: str) -> tuple[int, list[str]]:
    grouped = table.group_by(key).aggregate([("split", "count_distinct")])
    leaking = grouped.filter(pc.greater(grouped.column("split_count_distinct"), 1))
    return grouped.num_rows, sorted(leaking.column(key).to_pylist())


def leakage_report(bucket: Bucket, version: str | None = None) -> LeakageReport:
    """Recompute each chip's place and block from its *name* and check each lies in one split.

    Reads only the ``chip`` and ``split`` columns; the block zoom is the manifest's.
    """
    manifest = read_manifest(bucket, version)
    zoom = manifest.config.block_zoom
    with bucket.local_copy(layout.dataset_key(manifest.version, "chips.parquet")) as path:
        table = pq.read_table(path, columns=["chip", "split"])
    # chip names are Z<zone>-<quadkey>_<catalog>: the place is everything before "_"
    footprint = pc.list_element(pc.split_pattern(table.column("chip"), "_", max_splits=1), 0)
    block = pc.utf8_slice_codeunits(footprint, 0, 4 + zoom)  # "Z35-" + the first `zoom` quadkey digits
    places = pa.table({"footprint": footprint, "block": block, "split": table.column("split")})
    blocks, leaking_blocks = _multi_split(places, "block")
    footprints, leaking_footprints = _multi_split(places, "footprint")
    return LeakageReport(table.num_rows, blocks, footprints, leaking_blocks, leaking_footprints)


def label_support(manifest: DatasetManifest, min_examples: int) -> dict[str, dict[str, int]]:
    """Labels with fewer than ``min_examples`` positive chips in train or val: {label: {split: n}}."""
    weak: dict[str, dict[str, int]] = {}
    for label in manifest.vocabulary.names:
        counts = {s: manifest.label_counts[s][label] for s in ("train", "val")}
        if min(counts.values()) < min_examples:
            weak[label] = counts
    return weak


__all__ = ["LeakageReport", "label_support", "leakage_report"]
