"""A cell's change file: pairs scored by the encoder from the same pass, kept while unchanged, re-scored when a chip
is re-chipped, and filled in (or repaired) by change_table."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imagesim_pipeline.changes.cell_changes import read_cell_changes, read_change_map
from imagesim_pipeline.changes.detect import EMBEDDING, FEATURE_MAPS, change_table
from imagesim_pipeline.changes.feature_maps import OnnxFeatureMaps
from imagesim_pipeline.changes.maps import STORED_DOWNSAMPLE
from imagesim_pipeline.changes.spatial import ChipPairScorer
from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.embeddings.cell_embeddings import embed_cell, kept_chips
from imagesim_pipeline.embeddings.encoder import OnnxEncoder
from imagesim_pipeline.storage import layout, open_bucket
from imagesim_pipeline_tests.conftest import chip_cells

PAIR_COLUMNS = ["place", "chip_before", "chip_after", "bytes_before", "bytes_after"]


def _pairs_by_place(bucket, cell: str) -> dict[str, list[tuple]]:
    """place -> its expected pair keys (consecutive chips by date), from the chip manifest."""
    places: dict[str, list[dict]] = {}
    for r in kept_chips(bucket, cell):
        places.setdefault(ChipName.parse(r["chip"]).cell.id, []).append(r)
    out = {}
    for place, rows in places.items():
        rows.sort(key=lambda r: (r["date"], r["catalog_id"]))
        out[place] = [(place, a["chip"], b["chip"], a["bytes"], b["bytes"]) for a, b in zip(rows, rows[1:])]
    return out


def _rows(bucket, version: str, cell: str) -> list[dict]:
    table = pq.read_table(io.BytesIO(bucket.read_bytes(layout.cell_changes_key(version, cell))))
    return sorted(table.to_pylist(), key=lambda r: (r["place"], r["chip_before"]))


def _keys(rows: list[dict]) -> set[tuple]:
    return {tuple(r[c] for c in PAIR_COLUMNS) for r in rows}


@pytest.fixture(scope="module")
def scored_cell(demo_model, tmp_path_factory):
    """(root, version, cell, first run, encoder, scorer): a copy of the demo model with its smallest cell embedded
    with changes=True (nothing else embedded). Read only: copy it before writing."""
    root, version = demo_model
    target = tmp_path_factory.mktemp("cell-changes") / "bucket"
    shutil.copytree(root, target)
    bucket = open_bucket(target)
    cell = min(chip_cells(bucket), key=lambda c: len(kept_chips(bucket, c)))
    encoder = OnnxEncoder.from_bucket(bucket, version=version, threads=2)
    first = embed_cell(bucket, encoder, cell, changes=True)
    scorer = ChipPairScorer(OnnxFeatureMaps.from_bucket(bucket, "smlc", version, threads=2))
    return target, version, cell, first, encoder, scorer


def _copy(scored_cell, tmp_path):
    target = tmp_path / "bucket"
    shutil.copytree(scored_cell[0], target)
    return open_bucket(target)


def test_the_encoder_writes_one_scored_pair_per_consecutive_chips_of_a_place(scored_cell):
    """One row per consecutive pair of each place's chips (from the manifest), finite scores, decodable maps."""
    root, version, cell, first, encoder, _ = scored_cell
    bucket = open_bucket(root)
    expected = {k for keys in _pairs_by_place(bucket, cell).values() for k in keys}
    rows = _rows(bucket, version, cell)
    assert len(rows) == len(expected) > 10 and _keys(rows) == expected
    assert first.pairs_scored == len(expected) and first.pairs_kept == 0 and first.encoded == first.chips
    changes = np.array([r["change"] for r in rows])
    assert np.isfinite(changes).all() and (changes >= 0).all() and changes.std() > 0
    key = layout.cell_changes_key(version, cell)
    side = encoder.prep.size // STORED_DOWNSAMPLE
    for r in rows[:5]:
        change = read_change_map(bucket, key, r["chip_before"], r["chip_after"])
        assert change.ndim == 2 and change.shape == (side, side) and change.dtype.kind == "f"
        assert 0.0 <= change.min() and change.max() <= 1.0 and change.max() > 0


def test_running_again_re_encodes_nothing_and_keeps_every_pair(scored_cell, tmp_path):
    """Unchanged chips: no chip encoded, no pair scored, the same change rows written back."""
    _, version, cell, first, encoder, _ = scored_cell
    bucket = _copy(scored_cell, tmp_path)
    before = _rows(bucket, version, cell)
    again = embed_cell(bucket, encoder, cell, changes=True)
    assert again.encoded == 0 and again.reused == first.chips
    assert again.pairs_scored == 0 and again.pairs_kept == len(before) == first.pairs_scored
    assert _rows(bucket, version, cell) == before


def test_a_re_chipped_chip_re_scores_its_place_only(scored_cell, tmp_path):
    """Other bytes for one chip: that place's pairs are scored again (new byte count), the others kept as they were."""
    _, version, cell, first, encoder, _ = scored_cell
    bucket = _copy(scored_cell, tmp_path)
    before = _rows(bucket, version, cell)
    places = _pairs_by_place(bucket, cell)
    place = sorted(p for p, keys in places.items() if keys)[len(places) // 2]
    chip = places[place][0][2]  # the after chip of the place's first pair
    other = next(keys[0][1] for p, keys in places.items() if keys and p != place)  # another place's content
    data = bucket.read_bytes(chip_key(ChipName.parse(other)))
    assert len(data) != len(bucket.read_bytes(chip_key(ChipName.parse(chip))))  # a re-chip: another byte count
    bucket.write_bytes(chip_key(ChipName.parse(chip)), data)
    manifest = json.loads(bucket.read_text(layout.chip_manifest_key(cell)))
    row = next(r for r in manifest["chips"] if r["chip"] == chip)
    row["bytes"] = len(data)
    bucket.write_text(layout.chip_manifest_key(cell), json.dumps(manifest))

    again = embed_cell(bucket, encoder, cell, changes=True)
    chips_of_place = len(places[place]) + 1
    assert again.pairs_scored == len(places[place]) and again.pairs_kept == first.pairs_scored - len(places[place])
    assert again.encoded == chips_of_place and again.reused == first.chips - chips_of_place
    after = _rows(bucket, version, cell)
    assert len(after) == len(before)
    assert [r for r in after if r["place"] != place] == [r for r in before if r["place"] != place]
    rescored = [r for r in after if r["place"] == place]
    assert _keys(rescored) == set(_pairs_by_place(bucket, cell)[place])
    assert any(r["bytes_after"] == len(data) for r in rescored)
    old = {r["chip_after"]: r["change"] for r in before if r["place"] == place}
    assert all(r["change"] != old[r["chip_after"]] for r in rescored if r["chip_after"] == chip)


def test_change_table_scores_the_pairs_of_a_cell_without_change_file_and_writes_it(scored_cell, tmp_path):
    """With a scorer: the lost file is scored again (the same scores as the encoder's) and written back; without
    one: the method is the embedding distance's robust z-score and there are no maps."""
    _, version, cell, first, _, scorer = scored_cell
    bucket = _copy(scored_cell, tmp_path)
    key = layout.cell_changes_key(version, cell)
    encoded = {(r["chip_before"], r["chip_after"]): r["change"] for r in _rows(bucket, version, cell)}
    bucket.delete(key)

    table = change_table(bucket, version, scorer=scorer)
    assert bucket.exists(key) and table.num_rows == len(encoded) == first.pairs_scored
    assert set(table.column("method").to_pylist()) == {FEATURE_MAPS}
    assert set(table.column("map").to_pylist()) == {key}
    rows = table.to_pylist()
    for r in rows:
        assert r["score"] == r["change"]
        assert r["change"] == pytest.approx(encoded[(r["chip_before"], r["chip_after"])], abs=1e-4)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    rewritten = _rows(bucket, version, cell)
    assert {(r["chip_before"], r["chip_after"]) for r in rewritten} == set(encoded)
    read_change_map(bucket, key, rows[0]["chip_before"], rows[0]["chip_after"])  # its maps are there

    plain = change_table(bucket, version, min_group=10**9)  # one group: every pair together
    assert set(plain.column("method").to_pylist()) == {EMBEDDING}
    assert set(plain.column("map").to_pylist()) == {""} and plain.column("change").null_count == plain.num_rows
    d = plain.column("distance").to_numpy()
    mad = 1.4826 * np.median(np.abs(d - np.median(d)))
    assert np.allclose(plain.column("score").to_numpy(), (d - np.median(d)) / mad)
    assert np.all(np.diff(plain.column("score").to_numpy()) <= 0)


def test_a_corrupt_change_file_is_named_and_rewritten(scored_cell, tmp_path):
    """Garbage in the cell's change file: read as no pairs with a warning naming it; change_table re-scores and
    rewrites it."""
    _, version, cell, first, _, scorer = scored_cell
    bucket = _copy(scored_cell, tmp_path)
    key = layout.cell_changes_key(version, cell)
    expected = _keys(_rows(bucket, version, cell))
    bucket.write_bytes(key, b"\x00garbage, not parquet" * 10)
    warnings: list[str] = []
    assert read_cell_changes(bucket, version, cell, scorer=scorer.params.fingerprint, warn=warnings.append) == {}
    assert len(warnings) == 1 and key in warnings[0] and "unreadable" in warnings[0]

    warnings.clear()
    table = change_table(bucket, version, warn=warnings.append, scorer=scorer)
    assert any(key in w for w in warnings)
    assert table.num_rows == first.pairs_scored and np.isfinite(table.column("score").to_numpy()).all()
    assert _keys(_rows(bucket, version, cell)) == expected  # readable again, every pair
    assert len(read_cell_changes(bucket, version, cell, scorer=scorer.params.fingerprint)) == first.pairs_scored


def test_pairs_scored_with_other_scorer_parameters_are_scored_again(scored_cell, tmp_path):
    """After an upgrade that changes the scorer's parameters, the cell's old rows are not ranked beside new ones:
    they are named, scored again with the current parameters and the file is rewritten."""
    _, version, cell, first, _, scorer = scored_cell
    bucket = _copy(scored_cell, tmp_path)
    key = layout.cell_changes_key(version, cell)
    rows = _rows(bucket, version, cell)
    assert {r["scorer"] for r in rows} == {scorer.params.fingerprint}
    table = pq.read_table(io.BytesIO(bucket.read_bytes(key)))
    buffer = io.BytesIO()  # what an earlier release wrote: other parameters, a made-up score
    pq.write_table(table.set_column(table.schema.get_field_index("change"), "change",
                                    pa.array([9.0] * table.num_rows)).drop_columns(["scorer"]), buffer)
    bucket.write_bytes(key, buffer.getvalue())
    warnings: list[str] = []
    assert read_cell_changes(bucket, version, cell, scorer=scorer.params.fingerprint, warn=warnings.append) == {}
    assert any("other change-scorer parameters" in w for w in warnings)

    scores = change_table(bucket, version, warn=warnings.append, scorer=scorer).column("change").to_numpy()
    assert np.allclose(np.sort(scores), np.sort([r["change"] for r in rows]), atol=1e-5)  # none of the 9.0s
    again = _rows(bucket, version, cell)
    assert _keys(again) == _keys(rows) and {r["scorer"] for r in again} == {scorer.params.fingerprint}
