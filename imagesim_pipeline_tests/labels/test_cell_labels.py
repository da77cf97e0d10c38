"""Labelling a cell in the bucket: the three tables agree, and bad input fails by name."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from imagesim_pipeline.labels import (
    LabelError,
    coverage_key,
    csv_key,
    dense,
    label_cell,
    labels_key,
    load_vocabulary,
    read_cell_labels,
    read_sparse_csv,
)
from imagesim_pipeline.labels.cell_labels import fingerprint_of, table_vocabulary
from imagesim_pipeline.labels.encoding import dense_from_arrow
from imagesim_pipeline.osm import OsmError
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline_tests.conftest import KOTKA_CELLS

CELL = KOTKA_CELLS[0]


def test_csv_parquet_and_coverage_agree(kotka_bucket):
    bucket = open_bucket(kotka_bucket)
    vocab = load_vocabulary()
    result = label_cell(bucket, CELL, vocab)
    table = read_cell_labels(bucket, CELL)
    assert table.num_rows == 2048 and fingerprint_of(table) == vocab.fingerprint
    assert table_vocabulary(table.schema) == vocab
    # CSV <-> Parquet round trip: same chips, same label ids
    sparse = read_sparse_csv(bucket.read_text(csv_key(CELL)), len(vocab))
    assert sparse == dict(zip(table.column("chip").to_pylist(), table.column("label_ids").to_pylist(), strict=True))
    matrix = dense(list(sparse.values()), len(vocab))
    assert np.array_equal(matrix, dense_from_arrow(table.column("label_ids"), len(vocab)))
    assert matrix.sum() == sum(result.histogram().values()) > 500
    # names follow ids; both acquisitions of a place carry the same labels
    rows = table.to_pylist()
    assert all(r["labels"] == [vocab.names[i] for i in r["label_ids"]] for r in rows)
    by_place: dict[str, set] = {}
    for r in rows:
        by_place.setdefault(r["footprint"], set()).add(tuple(r["label_ids"]))
    assert all(len(v) == 1 for v in by_place.values())
    # the coverage table holds every present label (and sub-threshold measures)
    coverage = pq.read_table(io.BytesIO(bucket.read_bytes(coverage_key(CELL)))).to_pylist()
    present = {(c["footprint"], c["label_id"]) for c in coverage if c["present"]}
    assert present == {(r["footprint"], i) for r in rows for i in r["label_ids"]}
    assert len(coverage) > len(present)  # e.g. a few metres of road in a chip
    for r in rows[:200]:
        for i, share in zip(r["label_ids"], r["area_share"], strict=True):
            assert 0 <= share <= 1
            if vocab.labels[i].geometry == ("polygon",):
                assert share >= vocab.labels[i].min_area_share


def test_relabelling_is_idempotent(kotka_bucket):
    bucket = open_bucket(kotka_bucket)
    label_cell(bucket, CELL, load_vocabulary())
    first = bucket.read_bytes(csv_key(CELL))
    label_cell(bucket, CELL, load_vocabulary())
    assert bucket.read_bytes(csv_key(CELL)) == first


def test_an_empty_osm_document_gives_label_free_chips_and_says_so(kotka_bucket):
    bucket = open_bucket(kotka_bucket)
    key = f"ard/35/{CELL[4:]}/osm_data.json"
    data = json.loads(bucket.read_text(key))
    data.update(nodes=[], ways=[], relations=[])
    bucket.write_text(key, json.dumps(data))
    result = label_cell(bucket, CELL, load_vocabulary())
    assert result.unlabelled == result.table.num_rows == 2048
    assert any("holds no tagged OSM features" in p for p in result.problems)


@pytest.mark.parametrize("damage, message", [
    ("no_osm", "osm_data.json does not exist: materialize osm_data for Z35-013133111113"),
    ("corrupt_osm", "is not valid JSON"),
    ("no_index", "does not exist: materialize nodata_index for Z35-013133111113"),
])
def test_missing_or_corrupt_inputs_fail_by_name_and_write_nothing(kotka_bucket, damage, message):
    bucket = open_bucket(kotka_bucket)
    osm = kotka_bucket / "ard" / "35" / CELL[4:] / "osm_data.json"
    if damage == "no_osm":
        osm.unlink()
    elif damage == "corrupt_osm":
        osm.write_bytes(osm.read_bytes()[:5000])
    else:
        (kotka_bucket / "nodata-index" / "35" / f"{CELL}.parquet").unlink()
    with pytest.raises((LabelError, OsmError), match=message):
        label_cell(bucket, CELL, load_vocabulary())
    assert not bucket.exists(labels_key(CELL)) and not bucket.exists(csv_key(CELL))


@pytest.mark.parametrize("text, message", [
    ("chip,tags\n", "header"),
    ("chip,labels\na.jpg,1 x\n", "line 2: labels '1 x' are not space-separated integers"),
    ("chip,labels\na.jpg,1 13\n", "line 2: label id outside 0..12"),
    ("chip,labels\na.jpg\n", "line 2: expected 2 fields"),
])
def test_malformed_sparse_csv_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        read_sparse_csv(text, 13)
