"""Jobs. ``cell_job`` is the main job: every per-cell asset for one ARD cell partition."""

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    ScheduleDefinition,
    define_asset_job,
)

CELL_ASSETS = AssetSelection.assets("ard_tile", "osm_data", "chips", "nodata_index", "chip_labels")

cell_job = define_asset_job(
    "cell_job",
    selection=CELL_ASSETS,  # partitioned by ard_cells, inferred from the assets
    description="The main job: materialize every per-cell asset of one level-12 ARD cell.",
)

dataset_job = define_asset_job(
    "dataset_job",
    selection=AssetSelection.assets("training_dataset"),
    description="Build the training dataset from the labels of every cell, and check its splits.",
)

train_job = define_asset_job(
    "train_job",
    selection=AssetSelection.assets("smlc_model", "onnx_model"),
    tags={"imagesim/compute": "trainer"},
    description="Train the SMLC on the latest training dataset, export it to ONNX and promote it when its "
                "checks pass (the trainer compute profile).",
)

embedding_job = define_asset_job(
    "embedding_job",
    selection=AssetSelection.assets("chip_embeddings"),  # partitioned by ard_cells
    description="Encode one cell's chips with the published ONNX model (after train_job).",
)

search_job = define_asset_job(
    "search_job",
    selection=AssetSelection.assets("similarity_index", "chip_changes"),
    description="Build or extend the similarity index over every cell's embeddings and score the changes "
                "between acquisitions.",
)

dataset_schedule = ScheduleDefinition(
    name="dataset_nightly",
    job=dataset_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,  # turn on in the UI (Automation) once cells arrive regularly
    description="Rebuild the training dataset every night from the labels of all cells; when no labels "
                "changed it rewrites the same version (the version is a hash of the inputs).",
)
