"""Faults while chipping: a truncated re-delivery, leftovers of a killed run, a crash in the middle of a commit.

After each, the cell's published chips and its manifest describe one delivery, byte for byte.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import rasterio

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.chips.cell_chips import (
    JOURNAL,
    chip_cell,
    read_manifest,
    recover_cell,
)
from imagesim_pipeline.chips.chipper import ChipError
from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.chips.nodata_index import classify_chip_folder
from imagesim_pipeline.storage import LocalBucket, StorageError, layout, open_bucket

CELL = "Z31-102220011031"


def published(bucket, cell: str) -> dict[str, bytes]:
    zone = cell[1:3]
    return {o.key.rsplit("/", 1)[1]: bucket.read_bytes(o.key) for o in bucket.list(f"chips/{zone}/{cell}")
            if o.key.endswith(".jpg")}


def assert_consistent(bucket, cell: str) -> dict[str, bytes]:
    """The manifest names exactly the published chips, with their byte counts; nothing is staged."""
    rows = {r["chip"]: r for r in read_manifest(bucket, cell).chips if r["written"]}
    files = published(bucket, cell)
    assert set(files) == set(rows)
    assert all(len(files[name]) == rows[name]["bytes"] for name in files)
    assert not list(bucket.list(layout.chip_staging_prefix(cell)))
    folder = bucket.root / "chips" / cell[1:3]
    assert not [p for p in folder.iterdir() if p.name.startswith(".imagesim-tmp-")]
    return files


def _delivery(bucket):
    return discover_bucket(bucket).cells[CELL]


def _redeliver_truncated(path, fraction: float = 0.9) -> None:
    """Replace a visual COG by a different image of the same cell, cut at ``fraction`` of its bytes."""
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    changed = np.where(data > 0, 255 - data, 0).astype(data.dtype)
    profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    other = path.with_name("redelivery.tif")
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(changed)
    raw = other.read_bytes()
    other.unlink()
    path.write_bytes(raw[: int(len(raw) * fraction)])


def test_a_truncated_redelivery_changes_no_published_chip(bucket_copy, monkeypatch):
    bucket = open_bucket(bucket_copy)
    chip_cell(bucket, _delivery(bucket))
    before = assert_consistent(bucket, CELL)
    manifest = bucket.read_bytes(layout.chip_manifest_key(CELL))
    visual = bucket_copy / _delivery(bucket).acquisitions[0].visual_key
    original = visual.read_bytes()
    _redeliver_truncated(visual)
    staged = []
    real_write = LocalBucket.write_bytes
    monkeypatch.setattr(LocalBucket, "write_bytes", lambda self, key, data: (staged.append(key),
                                                                            real_write(self, key, data)))
    with pytest.raises((ChipError, StorageError, rasterio.errors.RasterioError)):
        chip_cell(bucket, _delivery(bucket))
    monkeypatch.undo()
    assert any("/_staging/" in key for key in staged)  # it failed part-way, after chips of the new image
    assert bucket.read_bytes(layout.chip_manifest_key(CELL)) == manifest
    assert assert_consistent(bucket, CELL) == before  # every chip still the old delivery's bytes
    visual.write_bytes(original)  # the delivery is fixed: the next run publishes it
    chip_cell(bucket, _delivery(bucket))
    assert assert_consistent(bucket, CELL) == before


def test_leftovers_of_a_killed_run_are_never_data_and_the_next_run_cleans_them(bucket_copy, tmp_path):
    bucket = open_bucket(bucket_copy)
    chip_cell(bucket, _delivery(bucket))
    before = assert_consistent(bucket, CELL)
    name = sorted(before)[0]
    folder = bucket_copy / "chips" / CELL[1:3]
    leftover = folder / f".imagesim-tmp-{uuid.uuid4().hex}-{name}"
    leftover.write_bytes(before[name][:100])  # an atomic write cut short by kill -9
    bucket.write_bytes(layout.chip_staging_prefix(CELL) + name, b"half a chip")  # a staged chip of the killed run
    # never read as data: not listed, not classified
    assert leftover.name not in {o.key.rsplit("/", 1)[1] for o in bucket.list("chips/")}
    index, problems = classify_chip_folder(folder, tmp_path / "idx.json")
    assert set(index) == set(before) and not problems
    result = chip_cell(bucket, _delivery(bucket))
    assert result.recovery.temporaries == 1 and result.recovery.discarded_staged == 1
    assert assert_consistent(bucket, CELL) == before


def test_a_crash_in_the_middle_of_a_commit_is_finished_by_the_next_run(bucket_copy, monkeypatch):
    bucket = open_bucket(bucket_copy)
    chip_cell(bucket, _delivery(bucket))
    old = assert_consistent(bucket, CELL)
    moves = {"n": 0}
    real_move = LocalBucket.move

    def crash_after_two(self, src, dst):
        if moves["n"] == 2:
            raise KeyboardInterrupt("killed")
        moves["n"] += 1
        real_move(self, src, dst)

    monkeypatch.setattr(LocalBucket, "move", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        chip_cell(bucket, _delivery(bucket), quality=60)  # a re-run that changes every chip's bytes
    monkeypatch.setattr(LocalBucket, "move", real_move)
    assert bucket.exists(layout.chip_staging_prefix(CELL) + JOURNAL)  # decided, half published
    recovery = recover_cell(bucket, CELL)
    assert recovery.finished_commit
    new = assert_consistent(bucket, CELL)
    assert set(new) == set(old) and all(new[n] != old[n] for n in new)  # all of the new delivery
    assert json.loads(bucket.read_text(layout.chip_manifest_key(CELL)))["quality"] == 60
    assert {ChipName.parse(n).cell.ancestor(12).id for n in new} == {CELL}
    assert all(bucket.exists(chip_key(ChipName.parse(n))) for n in new)
