"""Jobs, named for the machines of the reference deployment, and the schedules that start them.

* ``datamaker_job`` (m5, per cell): every per-cell asset, from the delivery to the chip labels.
* ``trainer_job`` (dataset on m5, training on the GPU machine): the training dataset, the SMLC, its ONNX export.
* ``encoder_job`` (m5): the cells' embeddings, then the similarity index and the change table. A run
  may cover one cell or a range of cells (``chip_embeddings`` runs a range in one step), and the
  unpartitioned index and changes are brought up to date once, after the embeddings.
"""

from datetime import datetime

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from imagesim_pipeline.orchestration.failures import RUN_RETRY_TAGS
from imagesim_pipeline.orchestration.partitions import ARD_CELLS

CELL_ASSETS = AssetSelection.assets("ard_tile", "osm_data", "chips", "nodata_index", "chip_labels")
TRAINING_ASSETS = AssetSelection.assets("smlc_model", "onnx_model")
SEARCH_ASSETS = AssetSelection.assets("similarity_index", "chip_changes")

datamaker_job = define_asset_job(
    "datamaker_job",
    selection=CELL_ASSETS,  # partitioned by ard_cells, inferred from the assets
    description="The main job (datamaker profile): every per-cell asset of one level-12 ARD cell, from the "
                "delivery to the chip labels.",
)

trainer_job = define_asset_job(
    "trainer_job",
    selection=AssetSelection.assets("training_dataset") | TRAINING_ASSETS,
    description="The training dataset from every cell's labels, the SMLC trained on it (trainer profile: the "
                "GPU machine) and its ONNX export, published (and `latest` moved) only when its checks pass.",
)

encoder_job = define_asset_job(
    "encoder_job",
    selection=AssetSelection.assets("chip_embeddings") | SEARCH_ASSETS,
    description="Encode cells' chips with the published ONNX model (one cell, or a range in one step), then "
                "bring the similarity index and the change table up to date.",
)


@schedule(job=trainer_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.STOPPED,
          description="Rebuild the training dataset every night from the labels of all cells. An unchanged "
                      "dataset keeps its version (a hash of the inputs); a new version starts training "
                      "(dataset_version_sensor).")
def dataset_nightly(context: ScheduleEvaluationContext) -> RunRequest:
    """Rebuild the training dataset once a night."""
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return RunRequest(run_key=f"dataset-{day}", asset_selection=[AssetKey("training_dataset")],
                      tags=RUN_RETRY_TAGS)


@schedule(job=datamaker_job, cron_schedule="0 4 * * 6", default_status=DefaultScheduleStatus.STOPPED,
          description="Every Saturday, fetch OpenStreetMap again for every registered cell and relabel its "
                      "chips (osm_data, chip_labels): one run per cell, queued behind other work.")
def osm_weekly(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
    """Fetch OSM again and relabel every registered cell once a week."""
    cells = context.instance.get_dynamic_partitions(ARD_CELLS)
    if not cells:
        return SkipReason("no registered cell")
    week = datetime.fromtimestamp(context.scheduled_execution_time.timestamp()).strftime("%G-W%V")
    return [RunRequest(run_key=f"osm-{week}-{cell}", partition_key=cell,
                       asset_selection=[AssetKey("osm_data"), AssetKey("chip_labels")],
                       tags={"imagesim/zone": cell[1:3], **RUN_RETRY_TAGS})
            for cell in cells]


__all__ = ["CELL_ASSETS", "datamaker_job", "dataset_nightly", "encoder_job", "osm_weekly", "trainer_job"]
