"""The ``chips`` and ``nodata_index`` assets per ARD cell."""

import time

from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.chips import (
    ChipName,
    chip_cell,
    chip_key,
    read_manifest,
    rebuild_index_json,
)
from imagesim_pipeline.chips.contact_sheet import contact_sheet
from imagesim_pipeline.chips.nodata_index import class_histogram, write_cell_index
from imagesim_pipeline.orchestration.ard_assets import ard_tile
from imagesim_pipeline.orchestration.compute import DATAMAKER_TAGS
from imagesim_pipeline.orchestration.failures import TRANSIENT_RETRY, step_errors
from imagesim_pipeline.orchestration.metadata import plot
from imagesim_pipeline.orchestration.partitions import ard_cells, registered_cell
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline.storage import layout


class ChipsConfig(Config):
    """How the ``chips`` asset cuts chips."""

    zoom: int = Field(default=17, description="chip zoom, 13..19 (17 = 156.25 m)")
    quality: int = Field(default=90, description="JPEG quality")
    size: int | None = Field(default=None, description="resize chips to size x size px (default: native)")
    processes: int = Field(default=1, description="worker processes per run")
    write_empty: bool = Field(default=False, description="also write chips without any valid pixel")


@asset(partitions_def=ard_cells, deps=[ard_tile], group_name="chips", kinds={"jpeg"}, op_tags=DATAMAKER_TAGS,
       retry_policy=TRANSIENT_RETRY,
       description="JPEG chips of every acquisition of the cell, cut exactly on the ARD grid at the chip zoom, "
                   "at `chips/<zone>/Z<zone>-<quadkey>_<catalog id>.jpg`, with a per-cell manifest.")
def chips(context: AssetExecutionContext, config: ChipsConfig, bucket: BucketResource) -> MaterializeResult:
    """Chip every acquisition of the cell and publish the chips with the cell's manifest."""
    cell = registered_cell(context)
    store = bucket.get_bucket()
    delivery = discover_bucket(store, layout.ard_cell_prefix(cell.id)).cells.get(cell.id)
    if delivery is None:
        raise Failure(allow_retries=False,
                      description=f"No delivery for {cell.id} in {store.uri}; materialize ard_tile to see why.")
    with step_errors(after=f" The published chips, manifest and nodata index of {cell.id} are unchanged (new "
                           "chips are only published once every acquisition is chipped)."):
        result = chip_cell(store, delivery, zoom=config.zoom, quality=config.quality, size=config.size,
                           processes=config.processes, write_empty=config.write_empty, progress=context.log.info)
    if str(result.recovery) != "nothing to recover":
        context.log.warning(f"{cell.id}: {result.recovery}")
    written = [r for r in result.rows if r["written"]]
    sample = [(r["chip"], store.read_bytes(chip_key(ChipName.parse(r["chip"]))))
              for r in written[:: max(1, len(written) // 18)][:18]]
    metadata = {
        "chips_written": result.written,
        "chips_without_data_skipped": len(result.rows) - result.written,
        "zoom": config.zoom,
        "class_histogram": MetadataValue.json(result.histogram()),
        "chips_per_second": round(len(result.rows) / max(result.seconds, 1e-9), 1),
        "megabytes": round(sum(r["bytes"] for r in written) / 1e6, 2),
        "stale_chips_deleted": result.deleted_stale,
        "recovered": str(result.recovery),
        "location": store.url(layout.chip_cell_prefix(cell.id) + "*"),
    }
    if sample:
        metadata["contact_sheet"] = plot(contact_sheet(sample), "sample chips")
    return MaterializeResult(metadata=metadata)


@asset(partitions_def=ard_cells, deps=[chips], group_name="chips", kinds={"parquet", "json"}, op_tags=DATAMAKER_TAGS,
       retry_policy=TRANSIENT_RETRY,
       description="The cell's chips classified no / partial / all data (from the raster mask at chipping time) "
                   "as `nodata-index/<zone>/<cell>.parquet`; `nodata-index.json` at the bucket root is rebuilt.")
def nodata_index(context: AssetExecutionContext, bucket: BucketResource) -> MaterializeResult:
    """Write the cell's nodata index table and rebuild the bucket's ``nodata-index.json``."""
    store = bucket.get_bucket()
    started = time.perf_counter()
    cell = registered_cell(context)
    if not store.exists(layout.chip_manifest_key(cell.id)):
        raise Failure(allow_retries=False, description=f"No chip manifest for {cell.id}: materialize chips first.")
    with step_errors(f"{cell.id}: "):
        manifest = read_manifest(store, cell.id)
        key, table = write_cell_index(store, manifest)
        total = rebuild_index_json(store)
    valid = table.column("valid_fraction").to_pylist()
    return MaterializeResult(metadata={
        "chips": table.num_rows,
        "class_histogram": MetadataValue.json(class_histogram(table.column("class").to_pylist())),
        "mean_valid_fraction": round(sum(valid) / len(valid), 4) if valid else 0.0,
        "table": store.url(key),
        "bucket_index_chips": total,
        "seconds": round(time.perf_counter() - started, 2),
    })
