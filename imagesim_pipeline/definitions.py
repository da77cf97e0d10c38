"""The Dagster code location of imagesim (loaded through ``workspace.yaml``)."""

from dagster import Definitions, multiprocess_executor

from imagesim_pipeline.orchestration.ard_assets import ard_tile
from imagesim_pipeline.orchestration.chip_assets import chips, nodata_index
from imagesim_pipeline.orchestration.jobs import (
    cell_job,
    dataset_job,
    dataset_schedule,
    embedding_job,
    search_job,
    train_job,
)
from imagesim_pipeline.orchestration.model_assets import onnx_model, smlc_model
from imagesim_pipeline.orchestration.loggers import one_line_console
from imagesim_pipeline.orchestration.label_assets import (
    LabelsResource,
    chip_labels,
    training_dataset,
)
from imagesim_pipeline.orchestration.osm_assets import OsmSourceResource, osm_data
from imagesim_pipeline.orchestration.resources import default_bucket_resource
from imagesim_pipeline.orchestration.search_assets import chip_changes, chip_embeddings, similarity_index
from imagesim_pipeline.orchestration.sensors import ard_delivery_sensor, orphaned_runs_sensor

defs = Definitions(
    assets=[ard_tile, osm_data, chips, nodata_index, chip_labels, training_dataset, smlc_model, onnx_model,
            chip_embeddings, similarity_index, chip_changes],
    jobs=[cell_job, dataset_job, train_job, embedding_job, search_job],
    sensors=[ard_delivery_sensor, orphaned_runs_sensor],
    schedules=[dataset_schedule],
    resources={"bucket": default_bucket_resource(), "osm": OsmSourceResource(), "labels": LabelsResource()},
    executor=multiprocess_executor.configured({"max_concurrent": 2}),
    loggers={"one_line_console": one_line_console},
)
