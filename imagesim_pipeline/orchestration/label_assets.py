"""The ``chip_labels`` asset per ARD cell and the unpartitioned ``training_dataset``."""


from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    ConfigurableResource,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.dataset.build import DatasetConfig, build_dataset
from imagesim_pipeline.dataset.checks import label_support, leakage_report
from imagesim_pipeline.dataset.manifest import MANIFEST
from imagesim_pipeline.dataset.stats import dataset_stats, stats_plots
from imagesim_pipeline.labels import (
    Vocabulary,
    VocabularyError,
    label_cell,
    labels_key,
    load_vocabulary,
)
from imagesim_pipeline.labels.cell_labels import (
    fingerprint_of,
    read_cell_labels,
    read_chip_index,
)
from imagesim_pipeline.orchestration.chip_assets import nodata_index
from imagesim_pipeline.orchestration.compute import DATAMAKER_TAGS
from imagesim_pipeline.orchestration.failures import TRANSIENT_RETRY, step_errors
from imagesim_pipeline.orchestration.metadata import counts_table, plot
from imagesim_pipeline.orchestration.osm_assets import osm_data
from imagesim_pipeline.orchestration.partitions import ard_cells, registered_cell
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline.settings import settings
from imagesim_pipeline.storage import layout


class LabelsResource(ConfigurableResource):
    """The label vocabulary shared by ``chip_labels`` and ``training_dataset``."""

    vocabulary: str = Field(default_factory=lambda: settings().vocabulary,
                            description="YAML/JSON vocabulary file (default: IMAGESIM_VOCABULARY, else the "
                                        "built-in 13 labels)")

    def load(self) -> Vocabulary:
        """The configured vocabulary (the built-in one by default)."""
        try:
            return load_vocabulary(self.vocabulary or None)
        except VocabularyError as exc:
            raise Failure(allow_retries=False, description=f"invalid label vocabulary: {exc}") from None


@asset(
    partitions_def=ard_cells,
    deps=[osm_data, nodata_index],
    group_name="labels",
    op_tags=DATAMAKER_TAGS,
    retry_policy=TRANSIENT_RETRY,
    kinds={"parquet", "csv"},
    check_specs=[AssetCheckSpec("chip_labels_complete", asset="chip_labels",
                                description="Every chip of the nodata index has a label row")],
    description="Per chip of the cell, the labels of the vocabulary that OSM puts inside its footprint, with "
                "each label's coverage: `labels/<zone>/<cell>.parquet`, the sparse encoding "
                "`labels/<zone>/<cell>.csv` (`chip,labels`) and per-footprint coverage "
                "`labels/<zone>/<cell>.coverage.parquet`.",
)
def chip_labels(context: AssetExecutionContext, bucket: BucketResource, labels: LabelsResource) -> MaterializeResult:
    """Label the cell's chips from its OSM data."""
    store = bucket.get_bucket()
    vocabulary = labels.load()
    try:
        with step_errors():
            result = label_cell(store, registered_cell(context).id, vocabulary)
    except ValueError as exc:  # a malformed chip name or cell id in the nodata index
        raise Failure(allow_retries=False, description=f"cannot label {context.partition_key}: {exc}; materialize "
                                                       "chips and nodata_index for it again") from None
    for problem in result.problems:
        context.log.warning(f"{result.cell}: {problem}")
    histogram = result.histogram()
    chips = result.table.num_rows
    footprints = len(result.footprints.footprints)
    # Read back what was stored: every indexed chip once, under this vocabulary.
    stored = read_cell_labels(store, result.cell)
    indexed = set(read_chip_index(store, ArdCell.parse(result.cell)).column("chip").to_pylist())
    labelled = stored.column("chip").to_pylist()
    missing = sorted(indexed - set(labelled))
    check = AssetCheckResult(
        check_name="chip_labels_complete",
        passed=not missing and len(labelled) == len(indexed) and fingerprint_of(stored) == vocabulary.fingerprint,
        metadata={"indexed_chips": len(indexed), "labelled_chips": len(labelled),
                  "missing": MetadataValue.json(missing[:50]), "vocabulary": fingerprint_of(stored) or "none"})
    return MaterializeResult(metadata={
        "chips": chips,
        "footprints": footprints,
        "label_free_chips": result.unlabelled,
        "label_histogram": MetadataValue.md(counts_table(("label", "chips"), sorted(
            histogram.items(), key=lambda kv: -kv[1]))),
        "osm_features": MetadataValue.json(result.features),
        "problems": MetadataValue.md("\n".join(f"- {p}" for p in result.problems) or "none"),
        "vocabulary": f"{vocabulary.source} ({len(vocabulary)} labels, {vocabulary.fingerprint})",
        "footprints_per_second": round(footprints / max(result.seconds, 1e-9), 1),
        "seconds": round(result.seconds, 2),
        "table": store.url(labels_key(result.cell)),
    }, check_results=[check])


class TrainingDatasetConfig(Config):
    """How ``training_dataset`` selects and splits chips, and the label support it checks."""

    version: str = Field(default="", description="dataset version name (default: a hash of the inputs)")
    block_zoom: int = Field(default=15, description="zoom of the spatial blocks that are split whole (15 = 625 m)")
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = Field(default=0, description="changes which blocks go to which split")
    keep_classes: list[str] = Field(default=["all data"], description="nodata classes of the chips kept")
    unlabelled_share: float = Field(default=0.1, description="share of label-free chips kept")
    max_cloud_fraction: float = 1.0
    min_examples: int = Field(default=20, description="the label_support check warns below this per split")


@asset(
    deps=[chip_labels],
    group_name="dataset",
    op_tags=DATAMAKER_TAGS,
    retry_policy=TRANSIENT_RETRY,
    kinds={"parquet", "csv"},
    check_specs=[
        AssetCheckSpec("no_spatial_leakage", asset="training_dataset", blocking=True,
                       description="No block and no place (chip footprint) has chips in two splits"),
        AssetCheckSpec("label_support", asset="training_dataset",
                       description="Every label has enough positive chips in train and val"),
        AssetCheckSpec("all_cells_included", asset="training_dataset",
                       description="Every cell with a nodata index contributed labels under this vocabulary"),
    ],
    description="The training dataset over all cells: 'all data' chips (and a share of label-free ones) split "
                "train/val/test by spatial blocks, versioned under `datasets/<version>/` (chips.parquet, "
                "sparse CSVs per split, vocabulary, manifest).",
)
def training_dataset(context: AssetExecutionContext, config: TrainingDatasetConfig, bucket: BucketResource,
                     labels: LabelsResource) -> MaterializeResult:
    """Build the training dataset version from every cell's labels and check it."""
    store = bucket.get_bucket()
    vocabulary = labels.load()
    settings = DatasetConfig(**config.model_dump(exclude={"min_examples"}))
    try:
        settings.validate()
    except ValueError as exc:
        raise Failure(allow_retries=False, description=f"invalid training_dataset config: {exc}") from None
    with step_errors():
        result = build_dataset(store, vocabulary, settings, progress=context.log.info)
        stats = dataset_stats(store, result.version)
        leakage = leakage_report(store, result.version)
    manifest = result.manifest
    for skipped in manifest.skipped_cells:
        context.log.warning(f"skipped {skipped.cell}: {skipped.reason}")
    counts = manifest.counts
    splits = ("train", "val", "test")
    label_rows = [(name, *(manifest.label_counts[s][name] for s in splits)) for name in vocabulary.names]
    metadata: dict[str, Any] = {
        "version": result.version,
        "chips": counts.chips,
        **{f"{s}_chips": counts.by_split[s] for s in splits},
        "blocks_by_split": MetadataValue.json(counts.blocks_by_split),
        "dropped": MetadataValue.json(counts.dropped),
        "label_counts": MetadataValue.md(counts_table(("label", *splits), label_rows)),
        "chips_by_zone": MetadataValue.json(stats["chips_by_zone"]),
        "skipped_cells": len(manifest.skipped_cells),
        "unchanged": result.unchanged,
        "manifest": store.url(layout.dataset_key(result.version, MANIFEST)),
        "seconds": round(result.seconds, 2),
    }
    for name, png in stats_plots(stats).items():
        metadata[f"plot_{name}"] = plot(png, name)
    weak = label_support(manifest, config.min_examples)
    checks = [
        AssetCheckResult(check_name="no_spatial_leakage", passed=leakage.ok, metadata={
            "blocks": leakage.blocks, "places": leakage.footprints,
            "leaking_blocks": MetadataValue.json(leakage.leaking_blocks[:50]),
            "leaking_places": MetadataValue.json(leakage.leaking_footprints[:50])}),
        AssetCheckResult(check_name="label_support", passed=not weak, severity=AssetCheckSeverity.WARN, metadata={
            "min_examples": config.min_examples,
            "weak_labels": MetadataValue.md(counts_table(("label", "train", "val"), [
                (name, c["train"], c["val"]) for name, c in weak.items()]) if weak else "none")}),
        AssetCheckResult(check_name="all_cells_included", passed=not manifest.skipped_cells,
                         severity=AssetCheckSeverity.WARN, metadata={
                             "cells": len(manifest.inputs),
                             "skipped": MetadataValue.md("\n".join(f"- {s.cell}: {s.reason}"
                                                                   for s in manifest.skipped_cells[:50])
                                                         or "none")}),
    ]
    return MaterializeResult(metadata=metadata, check_results=checks)


__all__ = ["LabelsResource", "TrainingDatasetConfig", "chip_labels", "training_dataset"]
