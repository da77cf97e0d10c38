"""The bucket's key layout: one module, every key under a known prefix, the forms README documents."""

from __future__ import annotations

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.osm.store import osm_key
from imagesim_pipeline.storage import layout

CELL = "Z05-120020223133"
CHIP = "Z05-12002022313301232_CAT1.jpg"


def test_every_key_has_its_documented_form_and_a_known_prefix():
    keys = {
        layout.ard_cell_prefix(CELL): "ard/05/120020223133/",
        layout.osm_key(CELL): "ard/05/120020223133/osm_data.json",
        layout.chip_key(CHIP): f"chips/05/{CHIP}",
        layout.chip_manifest_key(CELL): f"chips/05/_manifests/{CELL}.json",
        layout.chip_staging_prefix(CELL): f"chips/05/_staging/{CELL}/",
        layout.nodata_index_key(CELL): f"nodata-index/05/{CELL}.parquet",
        layout.labels_key(CELL, "csv"): f"labels/05/{CELL}.csv",
        layout.dataset_key("ds-1", "train.csv"): "datasets/ds-1/train.csv",
        layout.features_key("k", "train.npz"): "features/k/train.npz",
        layout.model_key("smlc", "v1", "model.onnx"): "models/smlc/v1/model.onnx",
        layout.model_pointer_key("smlc", "latest"): "models/smlc/latest.json",
        layout.embeddings_key("v1", CELL): f"embeddings/v1/05/{CELL}.parquet",
        layout.index_key("v1", "index.faiss"): "index/v1/index.faiss",
        layout.changes_key("v1"): "changes/v1/changes.parquet",
        layout.run_failure_key("2026-11-24", "datamaker_job", "abc"): "ops/run-failures/2026-11-24/datamaker_job-abc.md",
    }
    for built, expected in keys.items():
        assert built == expected
        assert built.startswith(layout.PREFIXES)


def test_the_stage_modules_use_the_layout():
    cell = ArdCell.parse(CELL)
    assert layout.ard_cell_prefix(CELL) == f"ard/{cell.path}/"
    assert osm_key(cell) == layout.osm_key(CELL)
    assert chip_key(ChipName.parse(CHIP)) == layout.chip_key(CHIP)
