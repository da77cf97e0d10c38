"""chips and nodata_index materialized through Dagster on real ingested imagery."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from imagesim_pipeline.orchestration.ard_assets import ard_tile
from imagesim_pipeline.orchestration.chip_assets import chips, nodata_index
from imagesim_pipeline.orchestration.partitions import ard_cells
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline.storage import open_bucket

CELLS = ["Z31-102220011031", "Z16-120200121330", "Z16-120200121332"]


def metadata(instance, asset: str, cell: str) -> dict:
    records = instance.fetch_materializations(AssetKey(asset), limit=100).records
    return next(r.asset_materialization.metadata for r in records if r.partition_key == cell)


@pytest.mark.e2e
def test_chips_and_nodata_index_through_dagster(bucket_copy, dagster_home):
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, CELLS)
    resources = {"bucket": BucketResource(uri=str(bucket_copy))}
    for cell in CELLS:
        result = materialize([ard_tile, chips, nodata_index], partition_key=cell, instance=instance,
                             resources=resources, selection=[chips, nodata_index])
        assert result.success
    bucket = open_bucket(bucket_copy)
    index = json.loads(bucket.read_text("nodata-index.json"))
    written = {k.key.rsplit("/", 1)[1] for k in bucket.list("chips/") if k.key.endswith(".jpg")}
    assert set(index) == written and len(written) == 18
    assert set(index.values()) == {"partial data", "all data"}
    table = pq.read_table(io.BytesIO(bucket.read_bytes("nodata-index/31/Z31-102220011031.parquet")))
    assert table.num_rows == 9 and {"valid_fraction", "cloud_fraction", "catalog_id"} <= set(table.column_names)
    meta = metadata(instance, "chips", "Z31-102220011031")
    assert meta["chips_written"].value == 9
    assert meta["class_histogram"].value == {"partial data": 8, "all data": 1}
    assert meta["contact_sheet"].value.startswith("![sample chips](data:image/png;base64,")
    assert metadata(instance, "nodata_index", "Z16-120200121332")["bucket_index_chips"].value == 18

    # Re-materializing is idempotent: same chips, same index.
    again = materialize([chips, nodata_index], partition_key=CELLS[0], instance=instance, resources=resources)
    assert again.success
    assert json.loads(bucket.read_text("nodata-index.json")) == index


@pytest.mark.e2e
def test_nodata_index_without_chips_says_what_to_do(bucket_copy, dagster_home):
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, CELLS[:1])
    result = materialize([nodata_index], partition_key=CELLS[0], instance=instance, raise_on_error=False,
                         resources={"bucket": BucketResource(uri=str(bucket_copy))})
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "materialize chips first" in failure.step_failure_data.error.message
