"""Change routes: the most changed places, and a place's change map as a heat overlay."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

import numpy as np
import shapely
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from imagesim_pipeline.changes.detect import read_changes
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.search.engine import MAX_K
from imagesim_pipeline.service.deps import BucketDep, ChipParam, Engines, chip_name, geojson
from imagesim_pipeline.service.schemas import ChangeOut, ChangesResponse, ModelRef
from imagesim_pipeline.storage import Bucket
from imagesim_pipeline.storage.layout import cell_changes_key, changes_key

router = APIRouter(tags=["changes"])


class ChangesCache:
    """The change table of the version served, read again when another version is served or the table is rewritten."""

    def __init__(self) -> None:
        self._stamp: tuple[str, Any] | None = None
        self._table: Any = None
        self._lock = threading.Lock()

    def table(self, bucket: Bucket, version: str) -> Any:
        """The change table (pyarrow) of ``version``, read once per version and write of the table."""
        stamp = next(((o.modified, o.size) for o in bucket.list(changes_key(version))), None)
        with self._lock:
            if self._stamp != (version, stamp):  # a new version, or chip_changes ran again
                self._table = read_changes(bucket, version)
                self._stamp = (version, stamp)
            return self._table


async def get_changes_cache(request: Request) -> ChangesCache:
    """The app's change-table cache (``app.state.changes``)."""
    cache: ChangesCache = request.app.state.changes
    return cache


def _finite(x: float | None) -> bool:
    return x is not None and bool(np.isfinite(x))


def change_out(r: dict) -> ChangeOut:
    """A change-table row for the API, with the link to its change map when it has one."""
    return ChangeOut(place=r["place"], score=round(r["score"], 4), method=r.get("method", "embedding"),
                     change=round(r["change"], 6) if _finite(r.get("change")) else None,
                     distance=round(r["distance"], 6), kind=r["kind"], before=r["chip_before"], after=r["chip_after"],
                     date_before=r["date_before"], date_after=r["date_after"],
                     map_url=f"/api/changes/{r['chip_before']}/{r['chip_after']}/map.png" if r.get("map") else None,
                     geometry=geojson(shapely.from_wkb(r["geometry"])))


@router.get("/api/changes", response_model=ChangesResponse)
def changes(engines: Engines, bucket: BucketDep, cache: Annotated[ChangesCache, Depends(get_changes_cache)],
            k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
            min_score: Annotated[float | None, Query(description="only scores at or above this")] = None,
            ) -> ChangesResponse:
    """The places that changed most between consecutive acquisitions (highest score first)."""
    engine = engines.require()
    started = time.perf_counter()
    table = cache.table(bucket, engine.version)
    top = [row for row in table.slice(0, k).to_pylist() if _finite(row["score"])]  # unscored pairs sort last
    if min_score is not None:
        top = [row for row in top if row["score"] >= min_score]
    return ChangesResponse(model=ModelRef(name=engine.name, version=engine.version),
                           took_ms=round((time.perf_counter() - started) * 1000, 3), pairs=table.num_rows,
                           changes=[change_out(r) for r in top])


@router.get("/api/changes/{before}/{after}/map.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def change_map_image(before: ChipParam, after: ChipParam, engines: Engines, bucket: BucketDep) -> Response:
    """The change map of a place between two of its chips, as a heat overlay (RGBA PNG at the stored map's
    size: stretch it over the after chip)."""
    from imagesim_pipeline.changes.cell_changes import read_change_map
    from imagesim_pipeline.changes.maps import overlay_png

    engine = engines.require()
    b, a = chip_name(before), chip_name(after)
    if b.cell != a.cell:
        raise HTTPException(422, f"{before} and {after} are chips of different places")
    key = cell_changes_key(engine.version, b.tile.id)
    if not bucket.exists(key):
        raise HTTPException(404, f"no change maps of {b.tile.id} for model {engine.version}: materialize "
                                 "chip_changes (encoder_job) with a model that has feature maps")
    try:
        change = read_change_map(bucket, key, before, after)
    except ImagesimError as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(overlay_png(change), media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})


__all__ = ["ChangesCache", "change_out", "get_changes_cache", "router"]
