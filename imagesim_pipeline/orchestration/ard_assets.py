"""The ``ard_tile`` asset: one ARD delivery cell, observed and described."""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from imagesim_pipeline.ard.delivery import summarise_delivery
from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.orchestration.compute import DATAMAKER_TAGS
from imagesim_pipeline.orchestration.failures import TRANSIENT_RETRY, step_errors
from imagesim_pipeline.orchestration.partitions import ard_cells, registered_cell
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline.storage import layout


def _acquisition_table(summary) -> str:
    rows = ["| date | catalog id | size (px) | GSD (m) | valid | MB |", "|---|---|---|---|---|---|"]
    for a in summary.acquisitions:
        rows.append(f"| {a.date} | {a.catalog_id} | {a.width}x{a.height} | {a.resolution:.3f} | "
                    f"{a.valid_fraction:.1%} | {a.bytes / 1e6:.1f} |")
    return "\n".join(rows)


@asset(
    partitions_def=ard_cells,
    group_name="ard",
    op_tags=DATAMAKER_TAGS,
    retry_policy=TRANSIENT_RETRY,
    kinds={"geotiff"},
    check_specs=[AssetCheckSpec("delivery_readable", asset="ard_tile",
                                description="Every acquisition's visual COG opens, is 3-band uint8 in the "
                                            "cell's CRS and lies inside the cell")],
    description="One level-12 ARD cell as delivered: its acquisitions (date, catalog id), footprint and "
                "bytes. Reads COG headers and masks only; writes nothing.",
)
def ard_tile(context: AssetExecutionContext, bucket: BucketResource) -> MaterializeResult:
    """Check the cell's delivery and summarise its acquisitions."""
    cell = registered_cell(context)
    store = bucket.get_bucket()
    prefix = f"{layout.ARD}{cell.path}/"
    with step_errors(f"{cell.id}: "):
        found = discover_bucket(store, prefix=prefix)
    for problem in found.problems:
        context.log.warning(f"skipped {problem}")
    delivery = found.cells.get(cell.id)
    if delivery is None:
        raise Failure(allow_retries=False,
            description=f"No delivery for {cell.id}: nothing usable under {store.url(prefix)}"
                        + (f" ({len(found.problems)} malformed entries, see the warnings)" if found.problems else "")
                        + ". Check IMAGESIM_BUCKET, or remove the partition if the cell was withdrawn."
        )
    with step_errors(f"{cell.id}: "):
        summary = summarise_delivery(store, delivery)
    for issue in summary.problems:
        context.log.error(issue)
    if not summary.acquisitions:
        raise Failure(allow_retries=False,
                      description=f"No readable acquisition for {cell.id}: " + "; ".join(summary.problems))
    footprint = summary.footprint
    metadata = {
        "cell": cell.id,
        "epsg": cell.epsg,
        "acquisitions": len(summary.acquisitions),
        "dates": ", ".join(delivery.dates),
        "catalog_ids": ", ".join(a.catalog_id for a in summary.acquisitions),
        "bytes": delivery.bytes,
        "footprint_km2": round(footprint.area / 1e6, 4),
        "cell_coverage": MetadataValue.float(round(footprint.area / cell.geometry.area, 4)),
        "footprint_wgs84": MetadataValue.json(summary.footprint_wgs84_geojson()),
        "acquisition_table": MetadataValue.md(_acquisition_table(summary)),
        "location": (MetadataValue.url(store.url(prefix)) if store.uri.startswith("s3://")
                     else MetadataValue.path(store.url(prefix))),
        "unusable_entries": len(found.problems) + len(summary.problems),
    }
    check = AssetCheckResult(
        check_name="delivery_readable",
        passed=not summary.problems and not found.problems,
        severity=AssetCheckSeverity.WARN,
        metadata={"problems": MetadataValue.md("\n".join(f"- {p}" for p in
                                                         [str(p) for p in found.problems] + summary.problems)
                                               or "none")},
    )
    return MaterializeResult(metadata=metadata, data_version=DataVersion(delivery.fingerprint()),
                             check_results=[check])
