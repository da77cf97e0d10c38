"""Search routes: by a chip id, by positive and negative examples, by an uploaded image."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from imagesim_pipeline.search.engine import MAX_K, Example, Hit, SearchEngine
from imagesim_pipeline.service.deps import (
    ChipParam,
    Engines,
    Format,
    SearchFilters,
    chip_name,
    filters_of,
    geojson,
    thumbnail,
)
from imagesim_pipeline.service.schemas import HitOut, LabelOut, ModelRef, SearchRequest, SearchResponse
from imagesim_pipeline.service.uploads import MAX_UPLOAD_BYTES, UploadError, check_image

router = APIRouter(tags=["search"])
K = Annotated[int, Query(ge=1, le=MAX_K)]
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": f"JPEG or PNG, at most {MAX_UPLOAD_BYTES} bytes"}}}}}}}


def _labels(hit: Hit) -> list[LabelOut]:
    return [LabelOut(label=name, probability=round(p, 4), predicted=True) for name, p in hit.labels]


def search_answer(engine: SearchEngine, hits: list[Hit], took: float, k: int, fmt: Format,
                  query: dict[str, Any]) -> SearchResponse | JSONResponse:
    """The hits as the API answers them: a :class:`SearchResponse`, or a GeoJSON FeatureCollection."""
    model = ModelRef(name=engine.name, version=engine.version)
    took_ms = round(took * 1000, 3)
    if fmt == "geojson":
        features = []
        for hit in hits:
            feature = hit.to_feature()
            feature["properties"]["thumbnail"] = thumbnail(hit.chip)
            features.append(feature)
        return JSONResponse({"type": "FeatureCollection", "features": features,
                             "query": query, "model": model.model_dump(), "took_ms": took_ms},
                            media_type="application/geo+json")
    return SearchResponse(model=model, index_vectors=len(engine), took_ms=took_ms, k=k, hits=[
        HitOut(rank=h.rank, chip=h.chip, score=round(h.score, 6), place=h.place, date=h.date,
               catalog_id=h.catalog_id, labels=_labels(h), geometry=geojson(h.geometry),
               thumbnail=thumbnail(h.chip)) for h in hits])


@router.get("/api/search/chip/{chip}", response_model=SearchResponse)
def search_by_chip(chip: ChipParam, engines: Engines, filters: SearchFilters, k: K = 10, spread: bool = False,
                   format: Format = "json") -> Any:
    """The chips that look most like ``chip`` (its own place excluded)."""
    engine = engines.require()
    chip_name(chip)
    started = time.perf_counter()
    hits = engine.by_chip(chip, k=k, filters=filters, spread=spread)
    return search_answer(engine, hits, time.perf_counter() - started, k, format, {"chip": chip})


@router.post("/api/search", response_model=SearchResponse)
def search_by_examples(body: SearchRequest, engines: Engines, format: Format = "json") -> Any:
    """More like the positive chips, less like the negative ones (Rocchio, beta 0.5)."""
    engine = engines.require()
    for chip in (*body.positives, *body.negatives):
        chip_name(chip)
    started = time.perf_counter()
    hits = engine.query([Example(chip=c) for c in body.positives], [Example(chip=c) for c in body.negatives],
                        k=body.k, filters=filters_of(body.filters), spread=body.spread)
    return search_answer(engine, hits, time.perf_counter() - started, body.k, format,
                         {"positives": body.positives, "negatives": body.negatives})


@router.post("/api/search/image", response_model=SearchResponse, openapi_extra=UPLOAD_BODY)
async def search_by_image(request: Request, engines: Engines, filters: SearchFilters, k: K = 10,
                          spread: bool = False, format: Format = "json") -> Any:
    """The chips that look most like an uploaded image (multipart field ``file``)."""
    engine = await run_in_threadpool(engines.require)  # may load a newly served index: not on the event loop
    name, data = await read_upload(request)
    check_image(data, name)
    started = time.perf_counter()
    hits = await run_in_threadpool(engine.by_image, data, k=k, filters=filters, spread=spread, name=name)
    return search_answer(engine, hits, time.perf_counter() - started, k, format, {"image": name})


async def read_upload(request: Request) -> tuple[str, bytes]:
    """The uploaded file's name and bytes: the declared size is checked before anything is parsed."""
    length = request.headers.get("content-length")
    if length is None:
        raise UploadError(411, "send the upload with a Content-Length (multipart/form-data, field 'file')")
    if not length.isdigit() or int(length) > MAX_UPLOAD_BYTES + 64 * 1024:
        raise UploadError(413, f"the upload is {length} bytes; the limit is {MAX_UPLOAD_BYTES} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(415, "send the image as multipart/form-data in the field 'file' "
                               "(curl -F file=@chip.jpg ...)")
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise UploadError(422, "the form has no file in the field 'file'")
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    return (upload.filename or "upload")[:120], data


__all__ = ["read_upload", "router", "search_answer"]
