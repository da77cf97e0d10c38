"""Building a dataset version: selection, leakage-proof splits, hashes, idempotency, statistics."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from imagesim_pipeline.dataset.build import (
    DatasetConfig,
    DatasetError,
    build_dataset,
    latest_version,
)
from imagesim_pipeline.dataset.checks import label_support, leakage_report
from imagesim_pipeline.dataset.read import iter_dense
from imagesim_pipeline.dataset.splits import block_of, footprint_of
from imagesim_pipeline.dataset.stats import dataset_stats, format_stats
from imagesim_pipeline.labels import label_cell, load_vocabulary, read_sparse_csv
from imagesim_pipeline.labels.vocabulary import Vocabulary
from imagesim_pipeline.storage import layout, open_bucket
from imagesim_pipeline_tests.conftest import KOTKA_CELLS


@pytest.fixture
def labelled(kotka_bucket):
    bucket = open_bucket(kotka_bucket)
    vocab = load_vocabulary()
    for cell in KOTKA_CELLS:
        label_cell(bucket, cell, vocab)
    return bucket, vocab


def test_dataset_holds_whole_blocks_of_all_data_chips(labelled):
    bucket, vocab = labelled
    result = build_dataset(bucket, vocab, DatasetConfig(block_zoom=15, unlabelled_share=0.25))
    manifest = result.manifest
    rows = pq.read_table(kotka_path(bucket, result.version)).to_pylist()
    assert len(rows) == manifest.counts.chips > 100
    assert {r["class"] for r in rows} == {"all data"}
    # every block and every place in exactly one split; the block is recomputed from the chip name
    split_of_block: dict[str, set] = {}
    for r in rows:
        assert r["block"] == block_of(footprint_of(r["chip"]), 15)
        split_of_block.setdefault(r["block"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_block.values())
    assert leakage_report(bucket).ok
    # label-free chips: about the asked share of the label-free places, kept by place (both acquisitions)
    free = [r for r in rows if not r["label_ids"]]
    dropped = manifest.counts.dropped["label_free"]
    assert 0.15 < len(free) / (len(free) + dropped) < 0.35
    assert len({footprint_of(r["chip"]) for r in free}) * 2 == len(free)
    # the CSVs are the same encodings, split by split, and the manifest counts them
    for split in ("train", "val", "test"):
        sparse = read_sparse_csv(bucket.read_text(layout.dataset_key(result.version, f"{split}.csv")), len(vocab))
        mine = {r["chip"]: r["label_ids"] for r in rows if r["split"] == split}
        assert sparse == mine
        assert manifest.counts.by_split[split] == len(mine)
        for name in vocab.names:
            i = vocab.index(name)
            assert manifest.label_counts[split][name] == sum(i in ids for ids in mine.values())
    # content hashes in the manifest are those of the stored files
    for name, info in manifest.files.items():
        assert hashlib.sha256(bucket.read_bytes(layout.dataset_key(result.version, name))).hexdigest() == info.sha256
    assert latest_version(bucket) == result.version


def kotka_path(bucket, version):
    return bucket.root / layout.dataset_key(version, "chips.parquet")


def test_rebuilding_from_the_same_inputs_gives_the_same_version_and_bytes(labelled):
    bucket, vocab = labelled
    first = build_dataset(bucket, vocab, DatasetConfig())
    stamp = (kotka_path(bucket, first.version)).stat().st_mtime_ns
    second = build_dataset(bucket, vocab, DatasetConfig())
    assert first.version == second.version and first.version.startswith("ds-")
    assert second.unchanged and not first.unchanged and second.manifest == first.manifest
    assert kotka_path(bucket, first.version).stat().st_mtime_ns == stamp  # left online, not rewritten
    bucket.delete(layout.dataset_key(first.version, "manifest.json"))  # an interrupted build: written again
    third = build_dataset(bucket, vocab, DatasetConfig())
    assert not third.unchanged and third.manifest.files == first.manifest.files
    other = build_dataset(bucket, vocab, DatasetConfig(seed=3))
    assert other.version != first.version
    named = build_dataset(bucket, vocab, DatasetConfig(version="v1"))
    assert named.version == "v1" and named.manifest.files["chips.parquet"] == first.manifest.files["chips.parquet"]


def test_the_leakage_check_catches_a_chip_moved_to_another_split(labelled):
    bucket, vocab = labelled
    result = build_dataset(bucket, vocab, DatasetConfig())
    path = kotka_path(bucket, result.version)
    table = pq.read_table(path)
    splits = table.column("split").to_pylist()
    victim = next(i for i, s in enumerate(splits) if s == "train")
    splits[victim] = "test"
    table = table.set_column(table.schema.get_field_index("split"), "split", [splits])
    pq.write_table(table, path)
    report = leakage_report(bucket)
    assert not report.ok
    assert report.leaking_footprints == [footprint_of(table.column("chip")[victim].as_py())]
    assert report.leaking_blocks == [table.column("block")[victim].as_py()]


def test_cells_with_missing_or_foreign_labels_are_skipped_with_the_reason(labelled):
    bucket, vocab = labelled
    config = json.loads(vocab.to_json())
    config["labels"][0]["min_area_share"] = 0.5
    label_cell(bucket, KOTKA_CELLS[1], Vocabulary.from_config(config))
    result = build_dataset(bucket, vocab, DatasetConfig())
    (skipped,) = result.manifest.skipped_cells
    assert skipped.cell == KOTKA_CELLS[1] and "materialize chip_labels for Z35-013133111131 again" in skipped.reason
    assert [i.cell for i in result.manifest.inputs] == [KOTKA_CELLS[0]]
    # No usable cell at all: an error, and the latest dataset is left as it was.
    bucket.delete(f"labels/35/{KOTKA_CELLS[0]}.parquet")
    with pytest.raises(DatasetError) as err:
        build_dataset(bucket, vocab, DatasetConfig())
    assert str(err.value).startswith("no usable chip_labels among the cells: Z35-013133111113:")
    assert f"The latest dataset stays {result.version!r}" in str(err.value)
    assert latest_version(bucket) == result.version


def test_a_selection_without_chips_is_an_error_not_an_empty_version(labelled):
    bucket, vocab = labelled
    with pytest.raises(DatasetError, match="no chip passes the selection .* The latest dataset stays none"):
        build_dataset(bucket, vocab, DatasetConfig(keep_classes=["no data"]))
    with pytest.raises(ValueError, match="max_cloud_fraction must be within 0..1"):
        build_dataset(bucket, vocab, DatasetConfig(max_cloud_fraction=-0.1))


def test_an_empty_bucket_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="run datamaker_job for some cells first"):
        build_dataset(open_bucket(tmp_path), load_vocabulary(), DatasetConfig())
    with pytest.raises(DatasetError, match="materialize training_dataset first"):
        latest_version(open_bucket(tmp_path))


def test_out_of_core_statistics_do_not_depend_on_the_batch_size(labelled):
    bucket, vocab = labelled
    result = build_dataset(bucket, vocab, DatasetConfig())
    small = dataset_stats(bucket, batch_rows=37)
    whole = dataset_stats(bucket, batch_rows=1_000_000)
    assert small == whole
    assert small["label_counts"] == result.manifest.label_counts
    co = small["cooccurrence"]
    totals = {n: sum(small["label_counts"][s][n] for s in ("train", "val", "test")) for n in vocab.names}
    assert [co[i][i] for i in range(len(vocab))] == [totals[n] for n in vocab.names]
    assert sum(small["labels_per_chip"]) == result.manifest.counts.chips
    assert small["chips_by_zone"] == {"35": result.manifest.counts.by_split}
    assert sum(small["area_share_histogram"]["counts"]["building"]) == totals["building"]
    assert "building" in format_stats(small)
    dense_rows = sum(len(chips) for chips, _ in iter_dense(bucket, None, "train", batch_rows=50))
    assert dense_rows == result.manifest.counts.by_split["train"]


def test_label_support_names_the_weak_labels_with_numbers(labelled):
    bucket, vocab = labelled
    manifest = build_dataset(bucket, vocab, DatasetConfig()).manifest
    weak = label_support(manifest, min_examples=10)
    assert "water" in weak and weak["water"] == {"train": manifest.label_counts["train"]["water"],
                                                  "val": manifest.label_counts["val"]["water"]}
    assert label_support(manifest, min_examples=0) == {}


def test_a_rebuild_that_fails_half_way_leaves_no_manifest_over_mixed_files(labelled):
    from imagesim_pipeline.dataset.build import read_manifest
    from imagesim_pipeline.storage import StorageError
    from imagesim_pipeline.storage.bucket import LocalBucket

    bucket, vocab = labelled
    build_dataset(bucket, vocab, DatasetConfig(version="v1"))
    assert read_manifest(bucket, "v1").config.seed == 0

    class FailingBucket(LocalBucket):
        def upload_file(self, local_path, key):
            if key.endswith("train.csv"):
                raise StorageError(f"{key}: connection reset")
            super().upload_file(local_path, key)

    with pytest.raises(StorageError, match="connection reset"):
        build_dataset(FailingBucket(bucket.root), vocab, DatasetConfig(version="v1", seed=5))
    with pytest.raises(DatasetError, match="'v1' is missing or incomplete; materialize training_dataset again"):
        read_manifest(bucket, "v1")


def test_adding_a_cell_leaves_the_splits_of_the_others_alone(kotka_bucket):
    bucket = open_bucket(kotka_bucket)
    vocab = load_vocabulary()
    label_cell(bucket, KOTKA_CELLS[0], vocab)  # the second cell is not labelled yet: skipped
    before = build_dataset(bucket, vocab, DatasetConfig(unlabelled_share=1.0))
    first = {r["chip"]: r["split"] for r in pq.read_table(kotka_path(bucket, before.version)).to_pylist()}
    label_cell(bucket, KOTKA_CELLS[1], vocab)
    after = build_dataset(bucket, vocab, DatasetConfig(unlabelled_share=1.0))
    both = {r["chip"]: r["split"] for r in pq.read_table(kotka_path(bucket, after.version)).to_pylist()}
    assert after.version != before.version and len(both) > len(first) > 100
    assert {c: both[c] for c in first} == first
    assert set(first.values()) == {"train", "val", "test"}


def test_the_stored_manifest_keeps_its_json_keys_and_an_older_writers_file_still_loads(labelled):
    """Users read manifest.json and latest.json as JSON: the typed record must not rename or add keys."""
    from imagesim_pipeline.dataset.build import read_manifest
    from imagesim_pipeline.storage.records import CorruptRecordError

    bucket, vocab = labelled
    result = build_dataset(bucket, vocab, DatasetConfig(version="v1"))
    key = layout.dataset_key("v1", "manifest.json")
    stored = json.loads(bucket.read_text(key))
    assert list(stored) == ["version", "created", "config", "vocabulary", "counts", "label_counts", "inputs",
                            "skipped_cells", "files"]
    assert stored["config"] == {"version": "v1", "block_zoom": 15, "train": 0.8, "val": 0.1, "test": 0.1, "seed": 0,
                                "keep_classes": ["all data"], "unlabelled_share": 0.1, "max_cloud_fraction": 1.0}
    assert set(stored["inputs"][0]) == {"cell", "chips", "sha256"}  # "unverified" only when some chips were
    assert stored["vocabulary"] == json.loads(vocab.to_json())  # label rules kept whole, not just name/geometry
    assert set(stored["counts"]) == {"chips", "by_split", "blocks_by_split", "label_free_by_split", "dropped",
                                     "kept_without_cloud_mask"}
    assert set(stored["files"]["chips.parquet"]) == {"sha256", "bytes"}
    assert json.loads(bucket.read_text(layout.DATASETS_LATEST)) == {"version": "v1"}
    # the previous writer: json.dumps of a dict, indent 2
    bucket.write_text(key, json.dumps(stored, indent=2))
    bucket.write_text(layout.DATASETS_LATEST, json.dumps({"version": "v1"}))
    assert read_manifest(bucket) == result.manifest
    # and rebuilding from the same inputs recognises it as unchanged
    assert build_dataset(bucket, vocab, DatasetConfig(version="v1")).unchanged
    # a manifest written before the cloud filter (no kept_without_cloud_mask) still loads, as 0
    older = json.loads(json.dumps(stored))
    del older["counts"]["kept_without_cloud_mask"]
    bucket.write_text(key, json.dumps(older, indent=2))
    assert read_manifest(bucket).counts.kept_without_cloud_mask == 0
    del stored["counts"]
    bucket.write_text(key, json.dumps(stored))
    with pytest.raises(CorruptRecordError, match=r"manifest.json is not a valid DatasetManifest record \(counts: "
                                                 r".*materialize training_dataset \(version v1\) again"):
        read_manifest(bucket, "v1")
