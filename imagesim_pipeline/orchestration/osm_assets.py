"""The ``osm_data`` asset: OpenStreetMap around each ARD cell, from a PBF extract or Overpass."""

import time
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    ConfigurableResource,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from imagesim_pipeline.ard.discovery import discover_bucket
from imagesim_pipeline.ard.grid import ArdCell, GridError
from imagesim_pipeline.orchestration.ard_assets import ard_tile
from imagesim_pipeline.orchestration.compute import DATAMAKER_TAGS
from imagesim_pipeline.orchestration.failures import TRANSIENT_RETRY, step_errors
from imagesim_pipeline.orchestration.partitions import ard_cells, registered_cell
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline.osm import (
    DEFAULT_MARGIN_DEG,
    OverpassClient,
    top_keys,
    write_osm_data,
)
from imagesim_pipeline.osm.cache import covering_extract, osm_for_cell, uncovered
from imagesim_pipeline.osm.overpass import DEFAULT_ENDPOINT
from imagesim_pipeline.settings import data_dir, settings
from imagesim_pipeline.storage import layout


def _default_pbf() -> str:
    """IMAGESIM_OSM_PBF, else the sample extracts and the demo world's synthetic extract in the bucket."""
    samples = data_dir() / "samples"
    return settings().osm_pbf or ",".join(
        [str(samples / "Helsinki.osm.pbf"), str(samples / "test.osm.pbf"), layout.SYNTHETIC_OSM_KEY])


class OsmSourceResource(ConfigurableResource):
    """Where OSM comes from: a .osm.pbf extract (default) or the Overpass API."""

    source: str = Field(default_factory=lambda: "overpass" if settings().overpass_url else "pbf",
                        description="'pbf' (IMAGESIM_OSM_PBF) or 'overpass' (IMAGESIM_OVERPASS_URL)")
    pbf: str = Field(default_factory=_default_pbf,
                     description="a .osm.pbf (local path or bucket key); several, comma-separated: each cell "
                                 "uses the first whose bounding box covers it")
    overpass_url: str = Field(default_factory=lambda: settings().overpass_url or DEFAULT_ENDPOINT)
    timeout: int = Field(default=180, description="Overpass [timeout:] in seconds")
    maxsize_mb: int = Field(default=512, description="Overpass [maxsize:] in MiB")
    retries: int = 5
    min_interval: float = Field(default=1.0, description="seconds between Overpass requests of one process")
    margin_deg: float = Field(default=DEFAULT_MARGIN_DEG, description="how far around the cell, in degrees")
    match_acquisition_date: bool = Field(default=False, description="Overpass [date:] = the cell's first acquisition")
    node_index: str = Field(default="flex_mem", description="osmium location index for PBF extraction")

    def client(self) -> OverpassClient:
        """An Overpass client with this resource's settings."""
        return OverpassClient(endpoint=self.overpass_url, timeout=self.timeout, maxsize=self.maxsize_mb * 2**20,
                              retries=self.retries, min_interval=self.min_interval)


def _top_keys_table(data: dict[str, Any]) -> str:
    rows = ["| tag key | elements |", "|---|---|"] + [f"| {k} | {n} |" for k, n in top_keys(data)]
    return "\n".join(rows)


@asset(
    partitions_def=ard_cells,
    deps=[ard_tile],
    group_name="osm",
    kinds={"json"},
    pool="overpass",
    op_tags=DATAMAKER_TAGS,
    retry_policy=TRANSIENT_RETRY,
    check_specs=[AssetCheckSpec("osm_geometry_complete", asset="osm_data",
                                description="Every way and relation member has all its node positions")],
    description="Raw OpenStreetMap elements around one ARD cell (Overpass 'out geom' JSON) at "
                "`ard/<zone>/<quadkey>/osm_data.json`, from a .osm.pbf extract (one read serves many "
                "cells) or the Overpass API.",
)
def osm_data(context: AssetExecutionContext, bucket: BucketResource, osm: OsmSourceResource) -> MaterializeResult:
    """Fetch or extract the OSM features around the cell."""
    cell = registered_cell(context)
    store = bucket.get_bucket()
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    with step_errors():
        if osm.source == "overpass":
            date = None
            if osm.match_acquisition_date:
                delivery = discover_bucket(store, layout.ard_cell_prefix(cell.id)).cells.get(cell.id)
                if delivery and delivery.dates:
                    date = f"{delivery.dates[0]}T00:00:00Z"
            data = osm.client().fetch_cell(cell, margin=osm.margin_deg, date=date)
        elif osm.source == "pbf":
            companions = []
            for key in context.instance.get_dynamic_partitions(ard_cells.name):
                try:
                    companions.append(ArdCell.parse(key))
                except GridError:
                    continue
            pbfs = [p.strip() for p in osm.pbf.split(",") if p.strip()]
            pbf = covering_extract(store, pbfs, cell, optional=[layout.SYNTHETIC_OSM_KEY])
            data, cache_hit, extracted = osm_for_cell(store, pbf or pbfs[0], cell, companions,
                                                      margin=osm.margin_deg, node_index=osm.node_index,
                                                      progress=context.log.info)
            if pbf is None:  # not "outside the first extract's box": outside every configured one
                data["provenance"]["problems"] = [uncovered(cell, pbfs)]
            extra = {"pbf_cache_hit": cache_hit, "cells_extracted_in_this_run": extracted}
        else:
            raise Failure(allow_retries=False,
                          description=f"unknown OSM source {osm.source!r}: use 'pbf' or 'overpass'")
    key = write_osm_data(store, cell, data)
    provenance = data["provenance"]
    for problem in provenance.get("problems", []):
        context.log.warning(f"{cell.id}: {problem}")
    counts = {kind: len(data[kind]) for kind in ("nodes", "ways", "relations")}
    metadata = {
        **counts,
        "source": provenance["source"],
        "origin": provenance.get("extract") or provenance.get("endpoint"),
        "snapshot": provenance.get("snapshot") or "unknown",
        "top_tag_keys": MetadataValue.md(_top_keys_table(data)),
        "location": store.url(key),
        "seconds": round(time.perf_counter() - started, 2),
        **extra,
    }
    if provenance["source"] == "overpass":
        metadata["query"] = MetadataValue.text(provenance["query"])
    check = AssetCheckResult(check_name="osm_geometry_complete", passed=not provenance.get("problems"),
                             severity=AssetCheckSeverity.WARN,
                             metadata={"problems": MetadataValue.md("\n".join(provenance.get("problems")) or "none")})
    return MaterializeResult(metadata=metadata, check_results=[check])


__all__ = ["OsmSourceResource", "osm_data"]
