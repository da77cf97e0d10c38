"""The per-cell chip manifest: one typed record, read the same whether this or an earlier version wrote it."""

from __future__ import annotations

import json

import pytest

from imagesim_pipeline.chips.cell_chips import read_manifest
from imagesim_pipeline.storage import MissingObjectError, layout, open_bucket
from imagesim_pipeline.storage.records import CorruptRecordError, write_record

CELL = "Z33-120020223133"
ROW = {"chip": "Z33-12002022313300000_C.jpg", "cell": CELL, "catalog_id": "C", "date": "2024-01-01", "zoom": 17,
       "class": "partial data", "valid_fraction": 0.5, "cloud_fraction": None, "bytes": 10, "written": True}
EMPTY = ROW | {"chip": "Z33-12002022313300001_C.jpg", "class": "no data", "valid_fraction": 0.0, "bytes": 0,
               "written": False}


def test_a_manifest_written_by_the_earlier_json_dumps_writer_reads_as_the_record(tmp_path):
    bucket = open_bucket(tmp_path)
    old = {"cell": CELL, "zoom": 17, "quality": 90, "size": None, "chips": [ROW, EMPTY]}
    bucket.write_text(layout.chip_manifest_key(CELL), json.dumps(old))
    manifest = read_manifest(bucket, CELL)
    assert manifest.cell == CELL and manifest.quality == 90 and manifest.size is None
    assert manifest.chips == [ROW, EMPTY] and manifest.written() == [ROW]
    assert manifest.chips[0]["class"] == "partial data"  # the row keeps the stored key "class"
    write_record(bucket, layout.chip_manifest_key(CELL), manifest)  # today's writer: the same JSON document
    assert json.loads(bucket.read_text(layout.chip_manifest_key(CELL))) == old


def test_a_missing_or_damaged_manifest_says_what_to_do(tmp_path):
    bucket = open_bucket(tmp_path)
    with pytest.raises(MissingObjectError, match=f"{CELL}.json does not exist: materialize chips for {CELL} again"):
        read_manifest(bucket, CELL)
    bucket.write_text(layout.chip_manifest_key(CELL), json.dumps({"cell": CELL, "zoom": 17, "quality": 90,
                                                                  "size": None, "chips": [ROW | {"bytes": "ten"}]}))
    with pytest.raises(CorruptRecordError, match=r"not a valid ChipManifest record \(chips\.0\.bytes: .*"
                                                 f"materialize chips for {CELL} again"):
        read_manifest(bucket, CELL)
