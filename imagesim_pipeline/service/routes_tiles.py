"""Tile routes: the ARD mosaic as web-mercator PNG tiles, and its TileJSON."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from imagesim_pipeline.service.deps import Mosaic

router = APIRouter(tags=["tiles"])
CatalogId = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.]+$")]


@router.get("/tiles/{z}/{x}/{y}.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def tile(z: int, x: int, y: int, mosaic: Mosaic, date: date | None = None, catalog_id: CatalogId = None) -> Response:
    """A web-mercator tile of the ARD mosaic: newest acquisition first, or one date or catalog id."""
    png = mosaic.tile(z, x, y, date, catalog_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=600"})


@router.get("/tiles/tilejson.json")
def tilejson(request: Request, mosaic: Mosaic, date: date | None = None, catalog_id: CatalogId = None) -> dict:
    """TileJSON for the mosaic (the tile URL carries the same date or catalog id)."""
    query = f"?date={date}" if date else (f"?catalog_id={catalog_id}" if catalog_id else "")
    return mosaic.tilejson(f"{str(request.base_url).rstrip('/')}/tiles/{{z}}/{{x}}/{{y}}.png{query}")


__all__ = ["router"]
