"""Jobs. ``cell_job`` is the main job: every per-cell asset for one ARD cell partition."""

from dagster import AssetSelection, define_asset_job

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
