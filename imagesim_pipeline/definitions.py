"""The Dagster code location of imagesim (loaded through ``workspace.yaml``).

``IMAGESIM_DEPLOYMENT`` chooses the executor (``orchestration/compute.py``): local processes, or an
ECS task per step placed by the compute profiles' tags."""

from dagster import Definitions

from imagesim_pipeline.orchestration.ard_assets import ard_tile
from imagesim_pipeline.orchestration.chip_assets import chips, nodata_index
from imagesim_pipeline.orchestration.compute import ComputeResource, deployment_executor
from imagesim_pipeline.orchestration.jobs import (
    datamaker_job,
    dataset_nightly,
    encoder_job,
    osm_weekly,
    trainer_job,
)
from imagesim_pipeline.orchestration.label_assets import (
    LabelsResource,
    chip_labels,
    training_dataset,
)
from imagesim_pipeline.orchestration.loggers import one_line_console
from imagesim_pipeline.orchestration.model_assets import onnx_model, smlc_model
from imagesim_pipeline.orchestration.osm_assets import OsmSourceResource, osm_data
from imagesim_pipeline.orchestration.resources import default_bucket_resource
from imagesim_pipeline.orchestration.search_assets import chip_changes, chip_embeddings, similarity_index
from imagesim_pipeline.orchestration.sensors import (
    ard_delivery_sensor,
    dataset_version_sensor,
    model_promoted_sensor,
    orphaned_runs_sensor,
    run_failure_summary_sensor,
)

defs = Definitions(
    assets=[ard_tile, osm_data, chips, nodata_index, chip_labels, training_dataset, smlc_model, onnx_model,
            chip_embeddings, similarity_index, chip_changes],
    jobs=[datamaker_job, trainer_job, encoder_job],
    sensors=[ard_delivery_sensor, dataset_version_sensor, model_promoted_sensor, run_failure_summary_sensor,
             orphaned_runs_sensor],
    schedules=[dataset_nightly, osm_weekly],
    resources={"bucket": default_bucket_resource(), "osm": OsmSourceResource(), "labels": LabelsResource(),
               "compute": ComputeResource()},
    executor=deployment_executor(),
    loggers={"one_line_console": one_line_console},
)
