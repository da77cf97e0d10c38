"""Zone backfills: one Dagster asset backfill over every registered cell of a UTM zone.

The backfill is stored in the running instance (``DAGSTER_HOME``: SQLite locally, PostgreSQL on AWS)
exactly as the UI's "Materialize → backfill" stores it; the daemon's backfill loop then launches its
runs, one per cell for the per-cell assets, or one for a range where an asset's backfill policy says
so (``chip_embeddings``). Same route, same runs, whether started here or in the UI.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from dagster import AssetKey, DagsterInstance

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.orchestration.failures import RUN_RETRY_TAGS
from imagesim_pipeline.orchestration.partitions import ARD_CELLS, ard_cells

DAEMON_HEARTBEAT_S = 120
"""A daemon whose last heartbeat is older than this is taken as not running."""


@dataclass(frozen=True)
class ZoneBackfill:
    """A launched backfill: its id and the zone, cells and assets it covers."""
    backfill_id: str
    zone: int
    cells: list[str]
    assets: list[str]


def zone_cells(instance: DagsterInstance, zone: int) -> list[str]:
    """The registered cells of ``zone``, or an error naming the zones there are."""
    cells = instance.get_dynamic_partitions(ARD_CELLS)
    chosen = [c for c in cells if c[1:3] == f"{zone:02d}"]
    if not chosen:
        zones = sorted({c[1:3] for c in cells})
        raise ImagesimError(f"no registered cell in UTM zone {zone}"
                            + (f" (registered zones: {', '.join(zones)})" if zones else
                               ": no cell is registered at all; run `imagesim discover`"))
    return chosen


def launch_zone_backfill(instance: DagsterInstance, zone: int, assets: list[str] | None = None,
                         title: str | None = None) -> ZoneBackfill:
    """Store a backfill of ``assets`` (default: the per-cell assets of ``datamaker_job``) over every
    registered cell of ``zone``; the daemon runs it."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from imagesim_pipeline.definitions import defs
    from imagesim_pipeline.orchestration.jobs import CELL_ASSETS

    graph = defs.resolve_asset_graph()
    partitioned = sorted(k.to_user_string() for k in graph.get_all_asset_keys()
                         if graph.get(k).partitions_def == ard_cells)
    if assets:
        unknown = sorted(set(assets) - set(partitioned))
        if unknown:
            raise ImagesimError(f"not a per-cell asset: {', '.join(unknown)} (per-cell assets: "
                                f"{', '.join(partitioned)})")
        keys = [AssetKey(a) for a in assets]
    else:
        keys = sorted(CELL_ASSETS.resolve(graph), key=lambda k: k.to_user_string())
    cells = zone_cells(instance, zone)
    names = [k.to_user_string() for k in keys]
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=graph, partition_names=cells, asset_selection=keys,
        backfill_timestamp=time.time(), tags={"imagesim/zone": f"{zone:02d}", **RUN_RETRY_TAGS},
        dynamic_partitions_store=instance, all_partitions=False,
        title=title or f"zone {zone}: {', '.join(names)}", description=f"imagesim backfill --zone {zone}",
        run_config=None)
    instance.add_backfill(backfill)
    return ZoneBackfill(backfill_id, zone, cells, names)


def daemon_running(instance: DagsterInstance) -> bool:
    """Whether a dagster-daemon has sent a backfill heartbeat to ``instance`` lately."""
    beat = instance.get_daemon_heartbeats().get("BACKFILL")
    return beat is not None and time.time() - beat.timestamp < DAEMON_HEARTBEAT_S


def wait_for_backfill(instance: DagsterInstance, backfill_id: str, progress: Callable[[str], None],
                      timeout_s: float = 6 * 3600, poll_s: float = 5.0) -> str:
    """Follow a backfill until it ends, printing its runs' progress; returns its final status."""
    from dagster import DagsterRunStatus, RunsFilter

    done = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    last, deadline = "", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        backfill = instance.get_backfill(backfill_id)
        if backfill is None:
            raise ImagesimError(f"backfill {backfill_id} is not in this Dagster instance (deleted?)")
        runs = instance.get_runs(RunsFilter.for_backfill(backfill_id))
        finished = [r for r in runs if r.status in done]
        failed = [r for r in finished if r.status != DagsterRunStatus.SUCCESS]
        line = (f"  backfill {backfill_id}: {backfill.status.value.lower()}, {len(finished)}/{len(runs)} run(s) "
                f"finished" + (f", {len(failed)} failed" if failed else ""))
        if line != last:
            progress(line)
            last = line
        if backfill.status.value in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"):
            return backfill.status.value
        time.sleep(poll_s)
    raise ImagesimError(f"backfill {backfill_id} still runs after {timeout_s:.0f} s; follow it in the UI "
                        f"(Runs → Backfills)")


__all__ = ["ZoneBackfill", "daemon_running", "launch_zone_backfill", "wait_for_backfill", "zone_cells"]
