"""chip_labels and training_dataset through Dagster: failures name the cell and what to do."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, materialize

from imagesim_pipeline.orchestration.label_assets import (
    LabelsResource,
    chip_labels,
    training_dataset,
)
from imagesim_pipeline.orchestration.partitions import ard_cells
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline_tests.conftest import KOTKA_CELLS


def failure_message(result) -> str:
    return next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message


def run(assets, bucket, vocabulary="", partition=None):
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, KOTKA_CELLS)
    return materialize(assets, partition_key=partition, instance=instance, raise_on_error=False,
                       resources={"bucket": BucketResource(uri=str(bucket)), "labels": LabelsResource(vocabulary=vocabulary)})


@pytest.mark.e2e
def test_labels_then_dataset_with_a_custom_vocabulary(kotka_bucket, dagster_home, tmp_path):
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("labels:\n  - {name: built, tags: [building], geometry: [polygon], min_area_share: 0.05}\n"
                     "  - {name: road, tags: [highway], geometry: [line], min_length_m: 10}\n")
    for cell in KOTKA_CELLS:
        assert run([chip_labels], kotka_bucket, str(vocab), cell).success
    result = run([training_dataset], kotka_bucket, str(vocab))
    assert result.success
    meta = result.asset_materializations_for_node("training_dataset")[0].metadata
    assert "| built |" in meta["label_counts"].value and "building" not in meta["label_counts"].value
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["no_spatial_leakage"] is True


@pytest.mark.e2e
def test_failures_name_the_cell_or_the_rule(kotka_bucket, dagster_home, tmp_path):
    (kotka_bucket / "ard" / "35" / KOTKA_CELLS[1][4:] / "osm_data.json").unlink()
    missing = run([chip_labels], kotka_bucket, partition=KOTKA_CELLS[1])
    assert "materialize osm_data for Z35-013133111131" in failure_message(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels:\n  - {name: x, tags: ['highway~primary']}\n")
    invalid = run([chip_labels], kotka_bucket, str(bad), KOTKA_CELLS[0])
    assert "invalid label vocabulary" in failure_message(invalid) and "'highway~primary'" in failure_message(invalid)
    empty = run([training_dataset], tmp_path / "nothing")
    assert "run datamaker_job for some cells first" in failure_message(empty)
