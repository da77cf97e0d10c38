"""What the service's routes share: the app's state as dependencies, the one filter dependency, chip ids.

The app keeps its engine holder, mosaic and bucket on ``app.state`` (set by ``create_app``);
routes receive them through the dependencies here (``Engines``, ``Mosaic``, ``BucketDep``), never
through closures. :func:`search_filters` is the one definition of the filter query parameters
(``bbox``, ``label``, ``since``, ``until``, ``catalog_id``) of every GET-style search, so they
are documented and validated the same everywhere.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import shapely
from fastapi import Depends, HTTPException, Query, Request
from fastapi import Path as PathParam

from imagesim_pipeline.chips.naming import ChipName, ChipNameError
from imagesim_pipeline.search.engine import Filters, UnknownChipError
from imagesim_pipeline.service.engines import EngineHolder
from imagesim_pipeline.service.schemas import CHIP_ID_PATTERN, FiltersIn
from imagesim_pipeline.service.tiles import ArdMosaic
from imagesim_pipeline.storage import Bucket

ChipParam = Annotated[str, PathParam(pattern=CHIP_ID_PATTERN, max_length=128,
                                     description="a chip id: Z<zone>-<quadkey>_<catalog id>.jpg")]
Format = Literal["json", "geojson"]
BBOX_HELP = "west,south,east,north"


async def get_engines(request: Request) -> EngineHolder:
    """The app's engine holder (``app.state.engines``)."""
    engines: EngineHolder = request.app.state.engines
    return engines


async def get_mosaic(request: Request) -> ArdMosaic:
    """The app's ARD mosaic (``app.state.mosaic``)."""
    mosaic: ArdMosaic = request.app.state.mosaic
    return mosaic


async def get_bucket(request: Request) -> Bucket:
    """The bucket the app serves (``app.state.bucket``)."""
    bucket: Bucket = request.app.state.bucket
    return bucket


Engines = Annotated[EngineHolder, Depends(get_engines)]
Mosaic = Annotated[ArdMosaic, Depends(get_mosaic)]
BucketDep = Annotated[Bucket, Depends(get_bucket)]


def filters_of(f: FiltersIn) -> Filters:
    """The engine's filters from the API's (a JSON body's or the query parameters')."""
    return Filters(bbox=f.bbox, labels=tuple(f.labels), since=f.since, until=f.until,
                   catalog_ids=tuple(f.catalog_ids))


def parse_filters(bbox: str | None = None, labels: list[str] | None = None, since: date | None = None,
                  until: date | None = None, catalog_ids: list[str] | None = None) -> Filters:
    """Filters from query-string values, checked as a body's ``filters`` are; a 422 with one line when not valid."""
    from pydantic import ValidationError

    from imagesim_pipeline.search.bbox import BboxError, parse_bbox
    from imagesim_pipeline.storage.records import first_problem

    try:
        box = parse_bbox(bbox) if bbox else None  # the same checks as FiltersIn's and the CLI's --bbox
        return filters_of(FiltersIn(bbox=box, labels=labels or [], since=since, until=until,
                                    catalog_ids=catalog_ids or []))
    except BboxError as exc:
        raise HTTPException(422, str(exc)) from None
    except ValidationError as exc:  # too many labels or catalog ids: one line, not a 500
        raise HTTPException(422, first_problem(exc)) from None


async def search_filters(
        bbox: Annotated[str | None, Query(description=BBOX_HELP)] = None,
        # FastAPI copies a parameter's default per request: these list defaults are safe (B006)
        label: Annotated[list[str], Query(description="predicted label (repeat for several)")] = [],  # noqa: B006
        since: date | None = None, until: date | None = None,
        catalog_id: Annotated[list[str], Query()] = []) -> Filters:  # noqa: B006
    """The filter query parameters every search by query string shares, as the engine's filters."""
    return parse_filters(bbox, label, since, until, catalog_id)


SearchFilters = Annotated[Filters, Depends(search_filters)]


def chip_name(chip: str) -> ChipName:
    """The parsed chip id, or :class:`UnknownChipError` (a 404) when it is not exactly a chip's name."""
    try:
        name = ChipName.parse(chip)
    except ChipNameError as exc:
        raise UnknownChipError(str(exc)) from None
    if name.name != chip:  # ChipName.parse reads a path's last part: an id must be exactly a name
        raise UnknownChipError(f"{chip!r} is not a chip id (Z<zone>-<quadkey>_<catalog id>.jpg)")
    return name


def thumbnail(chip: str) -> str:
    """The URL of a chip's JPEG in this API."""
    return f"/api/chips/{chip}/image"


def geojson(geometry: shapely.Geometry) -> dict[str, Any]:
    """A shapely geometry as a GeoJSON geometry object."""
    return shapely.geometry.mapping(geometry)


__all__ = ["BucketDep", "ChipParam", "Engines", "Format", "Mosaic", "SearchFilters", "chip_name", "filters_of",
           "geojson", "get_bucket", "get_engines", "get_mosaic", "parse_filters", "search_filters", "thumbnail"]
