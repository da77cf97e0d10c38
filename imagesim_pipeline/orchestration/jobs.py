"""Jobs. ``cell_job`` is the main job: every per-cell asset for one ARD cell partition."""

from dagster import AssetSelection, define_asset_job

from imagesim_pipeline.orchestration.partitions import ard_cells

CELL_ASSETS = AssetSelection.assets("ard_tile")

cell_job = define_asset_job(
    "cell_job",
    selection=CELL_ASSETS,
    partitions_def=ard_cells,
    description="The main job: materialize every per-cell asset of one level-12 ARD cell.",
)
