"""The bucket-wide nodata-index.json stays complete when other cells' tables land meanwhile."""

from __future__ import annotations

import json

from imagesim_pipeline.chips.cell_chips import ChipManifest
from imagesim_pipeline.chips.nodata_index import (
    rebuild_index_json,
    write_cell_index,
)
from imagesim_pipeline.storage import layout, open_bucket


def manifest(cell: str, names: list[str]) -> ChipManifest:
    return ChipManifest.model_validate({"cell": cell, "zoom": 17, "quality": 90, "size": None, "chips": [
        {"chip": n, "cell": cell, "catalog_id": "C", "date": "2024-01-01", "zoom": 17, "class": "all data",
         "valid_fraction": 1.0, "cloud_fraction": None, "bytes": 10, "written": True} for n in names]})


def test_rebuild_picks_up_a_table_written_during_the_rebuild(tmp_path):
    bucket = open_bucket(tmp_path)
    write_cell_index(bucket, manifest("Z33-120020223133", ["Z33-12002022313300000_C.jpg"]))
    original = bucket.write_text
    calls = []

    def racing_write(key, text):
        original(key, text)
        if key == layout.NODATA_INDEX_JSON and not calls:  # another cell's run lands its table right now
            calls.append(key)
            write_cell_index(bucket, manifest("Z33-120020223132", ["Z33-12002022313200000_C.jpg"]))

    bucket.write_text = racing_write
    assert rebuild_index_json(bucket) == 2
    assert set(json.loads(bucket.read_text(layout.NODATA_INDEX_JSON))) == {"Z33-12002022313300000_C.jpg",
                                                                           "Z33-12002022313200000_C.jpg"}
