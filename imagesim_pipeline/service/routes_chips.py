"""Chip routes: an indexed chip's metadata and JPEG, and the chip grid in a map view."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse, Response

from imagesim_pipeline.chips.naming import chip_key
from imagesim_pipeline.search.engine import UnknownChipError
from imagesim_pipeline.service.deps import (
    BBOX_HELP,
    BucketDep,
    ChipParam,
    Engines,
    Mosaic,
    chip_name,
    geojson,
    parse_filters,
    thumbnail,
)
from imagesim_pipeline.service.schemas import ChipOut, LabelOut

router = APIRouter(tags=["chips"])
MAX_PLACES = 3000  # chip outlines per /api/places answer: beyond this the page asks to zoom in


@router.get("/api/chips/{chip}", response_model=ChipOut)
def chip_info(chip: ChipParam, engines: Engines, mosaic: Mosaic, bucket: BucketDep) -> ChipOut:
    """An indexed chip: labels with probabilities, date, catalog id, outline and source COG."""
    engine = engines.require()
    chip_name(chip)
    info = engine.describe(chip)
    source = mosaic.source_key(info["cell"], info["catalog_id"])
    return ChipOut(chip=chip, place=info["place"], cell=info["cell"], date=info["date"],
                   catalog_id=info["catalog_id"], geometry=geojson(info["geometry"]), thumbnail=thumbnail(chip),
                   labels=[LabelOut(label=n, probability=round(p, 4), predicted=on) for n, p, on in info["labels"]],
                   source_cog=bucket.url(source) if source else None)


@router.get("/api/chips/{chip}/image", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def chip_image(chip: ChipParam, bucket: BucketDep) -> Response:
    """The chip's JPEG, as published in the bucket."""
    key = chip_key(chip_name(chip))
    if not bucket.exists(key):
        raise UnknownChipError(f"chip {chip} is not in {bucket.url('chips/')}")
    return Response(bucket.read_bytes(key), media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})


@router.get("/api/places")
def places(bbox: Annotated[str, Query(description=BBOX_HELP)], engines: Engines,
           limit: Annotated[int, Query(ge=1, le=MAX_PLACES)] = MAX_PLACES) -> JSONResponse:
    """The chip grid in ``bbox``: each place's newest indexed chip, as GeoJSON outlines."""
    box = parse_filters(bbox).bbox  # checked as the searches' bbox filter is
    if box is None:
        raise HTTPException(422, f"bbox: give the map view as {BBOX_HELP} (degrees)")
    engine = engines.require()
    items, total = engine.places_in(box, limit)
    features = [{"type": "Feature", "geometry": geojson(it.geometry),
                 "properties": {"chip": it.chip, "place": it.place, "date": str(it.date)}} for it in items]
    return JSONResponse({"type": "FeatureCollection", "features": features, "places": total,
                         "truncated": total > len(items)}, media_type="application/geo+json")


__all__ = ["MAX_PLACES", "router"]
