"""The search service: an HTTP API over the query engine, map tiles over the ARD COGs, and the web page.

``create_app(bucket)`` builds a FastAPI app (OpenAPI docs at ``/docs``):

* ``GET /api/health``: the model version served and the one pending, index, labels, acquisitions, bounds.
* ``GET /api/search/chip/{chip}``, ``POST /api/search`` (positive and negative examples),
  ``POST /api/search/image`` (an uploaded image): results as JSON, or GeoJSON with
  ``format=geojson``; every answer carries ``took_ms``, the engine's time.
* ``GET /api/chips/{chip}`` (labels with probabilities, date, catalog id, source COG) and
  ``GET /api/chips/{chip}/image`` (the chip JPEG).
* ``GET /api/places?bbox=``: the chip grid in view (newest chip of each place), GeoJSON.
* ``GET /api/changes``: the most changed places, with their before and after chips and the link
  to their change map, ``GET /api/changes/{before}/{after}/map.png`` (a transparent-to-red heat
  overlay at the stored map's size, to stretch over the after chip).
* ``GET /tiles/{z}/{x}/{y}.png`` and ``GET /tiles/tilejson.json``: the ARD mosaic.
* ``GET /``: the web page; ``/static/``: its scripts and styles, Leaflet's among them, all
  served from this app (no CDN).
* ``GET /docs``: the API docs (Swagger UI), its scripts and styles served from this app too, so
  they work offline (``/static/vendor/swagger-ui``). There is no ``/redoc``: ReDoc loads from a CDN.

Bad input answers 4xx with ``{"detail": "<what is wrong and what to do>"}``: unknown or
malformed chip ids (ids never reach a bucket key unchecked), ``k`` out of range, uploads that are
not images or too large, tiles outside every delivery, a missing index. Unexpected failures
answer 500 with one line, the traceback going to the server log only.

The engine follows the model's ``serving`` pointer (re-read every ``refresh_s`` seconds) unless a
version is pinned: ``similarity_index`` moves it once a published version's index is complete, so
a new model is served without a restart and search never goes down in between; a rebuilt index of
the same version is reloaded too. ``/api/health`` names the version served and the one pending.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import shapely
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from imagesim_pipeline.changes.detect import ChangesError, read_changes
from imagesim_pipeline.chips.naming import ChipName, ChipNameError, chip_key
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.registry import DEFAULT_NAME, ModelNotFoundError, read_pointer, served_version
from imagesim_pipeline.search.catalog import IndexNotFoundError
from imagesim_pipeline.search.engine import MAX_K, Example, Filters, Hit, SearchEngine, UnknownChipError
from imagesim_pipeline.search.stores import index_build
from imagesim_pipeline.service.schemas import (
    CHIP_ID_PATTERN,
    ChangeOut,
    ChangesResponse,
    ChipOut,
    FiltersIn,
    Health,
    HitOut,
    LabelOut,
    ModelRef,
    SearchRequest,
    SearchResponse,
)
from imagesim_pipeline.service.tiles import ArdMosaic, TileError
from imagesim_pipeline.service.uploads import MAX_UPLOAD_BYTES, UploadError, check_image
from imagesim_pipeline.storage import Bucket, StorageError
from imagesim_pipeline.storage.layout import cell_changes_key, changes_key
from imagesim_pipeline.storage.records import CorruptRecordError

log = logging.getLogger("imagesim.service")
HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
LEAFLET_DIR = HERE / "web" / "node_modules" / "leaflet" / "dist"
SWAGGER_UI_DIR = HERE / "web" / "node_modules" / "swagger-ui-dist"  # /docs: FastAPI's default loads it from a CDN
MAX_PLACES = 3000  # chip outlines per /api/places answer: beyond this the page asks to zoom in

ChipParam = Annotated[str, PathParam(pattern=CHIP_ID_PATTERN, max_length=128,
                                     description="a chip id: Z<zone>-<quadkey>_<catalog id>.jpg")]
Format = Literal["json", "geojson"]


class NotReadyError(ImagesimError):
    """Search asked for while the bucket has no published model or index."""


def _finite(x: float | None) -> bool:
    return x is not None and bool(np.isfinite(x))


def _change_out(r: dict) -> ChangeOut:
    """A change-table row for the API, with the link to its change map when it has one."""
    return ChangeOut(place=r["place"], score=round(r["score"], 4), method=r.get("method", "embedding"),
                     change=round(r["change"], 6) if _finite(r.get("change")) else None,
                     distance=round(r["distance"], 6), kind=r["kind"], before=r["chip_before"], after=r["chip_after"],
                     date_before=r["date_before"], date_after=r["date_after"],
                     map_url=f"/api/changes/{r['chip_before']}/{r['chip_after']}/map.png" if r.get("map") else None,
                     geometry=_geojson(shapely.from_wkb(r["geometry"])))


def _status_of(exc: Exception) -> int:
    if isinstance(exc, UploadError):
        return exc.status
    if isinstance(exc, (UnknownChipError, TileError, IndexNotFoundError, ModelNotFoundError, NotReadyError,
                        ChangesError)):
        return 404
    if isinstance(exc, (StorageError, CorruptRecordError)):
        return 503
    return 422


class EngineHolder:
    """The query engine of the pinned or served model (``serving.json``), re-checked every ``refresh_s`` seconds.

    A new served version, or a rebuild of the same version's index (another ``build`` in its
    manifest), is loaded beside the engine in use and swapped in once complete; while it cannot be
    loaded (a pointer or index being written, a damaged file) the engine in use keeps answering and
    ``problem`` says why.
    """

    def __init__(self, bucket: Bucket, name: str = DEFAULT_NAME, version: str = "", refresh_s: float = 60.0):
        self.bucket, self.name, self.pinned, self.refresh_s = bucket, name, version, refresh_s
        self._engine: SearchEngine | None = None
        self._problem = ""
        self.pending = ""  # a published version newer than the served one, whose index is not complete yet
        self._checked = -np.inf
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            version = self.pinned or served_version(self.bucket, self.name)
            build = index_build(self.bucket, version)
            if self._engine is None or (self._engine.version, self._engine.build) != (version, build):
                self._engine = SearchEngine(self.bucket, self.name, version)
                log.info("serving model %s/%s (index build %s): %d indexed chips", self.name, version,
                         self._engine.build or "-", len(self._engine))
            self._problem = ""
        except ImagesimError as exc:  # keep answering with the engine in use
            self._problem = str(exc)
            if self._engine is not None:
                log.warning("still serving %s/%s: %s", self.name, self._engine.version, exc)
        self.pending = self._pending()
        self._checked = time.monotonic()

    def _pending(self) -> str:
        if self.pinned:
            return ""
        try:
            latest = read_pointer(self.bucket, self.name, "latest")
        except ImagesimError:
            return ""
        served = self._engine.version if self._engine else ""
        return latest.version if latest and latest.version != served else ""

    def get(self) -> SearchEngine | None:
        with self._lock:
            if time.monotonic() - self._checked > self.refresh_s:
                self._refresh()
            return self._engine

    def require(self) -> SearchEngine:
        engine = self.get()
        if engine is None:
            raise NotReadyError(f"search is not available yet: {self._problem}")
        return engine

    @property
    def problem(self) -> str:
        return self._problem


def _filters(f: FiltersIn) -> Filters:
    return Filters(bbox=f.bbox, labels=tuple(f.labels), since=f.since, until=f.until,
                   catalog_ids=tuple(f.catalog_ids))


def _query_filters(bbox: str | None, label: list[str], since: date | None, until: date | None,
                   catalog_id: list[str]) -> Filters:
    from pydantic import ValidationError

    from imagesim_pipeline.search.bbox import BboxError, parse_bbox

    try:
        box = parse_bbox(bbox) if bbox else None  # the same checks as FiltersIn's and the CLI's --bbox
        return _filters(FiltersIn(bbox=box, labels=label, since=since, until=until, catalog_ids=catalog_id))
    except BboxError as exc:
        raise HTTPException(422, str(exc)) from None
    except ValidationError as exc:  # too many labels or catalog ids: one line, not a 500
        first = exc.errors()[0]
        raise HTTPException(422, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _thumbnail(chip: str) -> str:
    return f"/api/chips/{chip}/image"


def _geojson(geometry: shapely.Geometry) -> dict[str, Any]:
    return shapely.geometry.mapping(geometry)


def _labels(hit: Hit) -> list[LabelOut]:
    return [LabelOut(label=name, probability=round(p, 4), predicted=True) for name, p in hit.labels]


def _search_answer(engine: SearchEngine, hits: list[Hit], took: float, k: int, fmt: Format,
                   query: dict[str, Any]) -> Any:
    model = ModelRef(name=engine.name, version=engine.version)
    took_ms = round(took * 1000, 3)
    if fmt == "geojson":
        features = []
        for hit in hits:
            feature = hit.to_feature()
            feature["properties"]["thumbnail"] = _thumbnail(hit.chip)
            features.append(feature)
        return JSONResponse({"type": "FeatureCollection", "features": features,
                             "query": query, "model": model.model_dump(), "took_ms": took_ms},
                            media_type="application/geo+json")
    return SearchResponse(model=model, index_vectors=len(engine), took_ms=took_ms, k=k, hits=[
        HitOut(rank=h.rank, chip=h.chip, score=round(h.score, 6), place=h.place, date=h.date,
               catalog_id=h.catalog_id, labels=_labels(h), geometry=_geojson(h.geometry),
               thumbnail=_thumbnail(h.chip)) for h in hits])


def _chip_name(chip: str) -> ChipName:
    try:
        name = ChipName.parse(chip)
    except ChipNameError as exc:
        raise UnknownChipError(str(exc)) from None
    if name.name != chip:  # ChipName.parse reads a path's last part: an id must be exactly a name
        raise UnknownChipError(f"{chip!r} is not a chip id (Z<zone>-<quadkey>_<catalog id>.jpg)")
    return name


def create_app(bucket: Bucket, name: str = DEFAULT_NAME, version: str = "", refresh_s: float = 60.0) -> FastAPI:
    """The search service over ``bucket``: the served model of ``name`` unless ``version`` pins one."""
    engines = EngineHolder(bucket, name, version, refresh_s)
    mosaic = ArdMosaic(bucket, refresh_s)
    app = FastAPI(title="imagesim search", version="1", docs_url=None, redoc_url=None,  # /docs below: no CDN
                  description="Search ARD chips by example, browse the ARD imagery as map tiles, list changed places.")
    app.state.engines, app.state.mosaic, app.state.bucket = engines, mosaic, bucket
    changes_cache: dict[str, Any] = {}

    @app.exception_handler(ImagesimError)
    async def imagesim_error(request: Request, exc: ImagesimError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc))

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> JSONResponse:
        log.warning("bucket error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"the bucket could not be read: {exc}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": "internal error: see the search service's log"}, status_code=500)

    @app.middleware("http")
    async def server_timing(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response

    # -- health ----------------------------------------------------------------------------------
    @app.get("/api/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """The model version served and the one pending (published, its index not complete yet), index, labels,
        the acquisitions and bounds of the imagery."""
        engine = engines.get()
        return Health(status="ok" if engine else "no_index", detail=engines.problem,
                      model=ModelRef(name=engine.name, version=engine.version) if engine else None,
                      pending=ModelRef(name=engines.name, version=engines.pending) if engines.pending else None,
                      index_build=engine.build if engine else "",
                      index_vectors=len(engine) if engine else 0,
                      index_kind=engine.store.describe()["kind"] if engine else "",
                      index_engine=engine.store.engine if engine else "",
                      labels=engine.labels if engine else [], acquisitions=mosaic.acquisitions(),
                      bounds=mosaic.bounds(), start=mosaic.start(), bucket=bucket.url(""))

    # -- search ----------------------------------------------------------------------------------
    @app.get("/api/search/chip/{chip}", response_model=SearchResponse, tags=["search"])
    def search_by_chip(chip: ChipParam, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                       bbox: Annotated[str | None, Query(description="west,south,east,north")] = None,
                       label: Annotated[list[str], Query(description="predicted label (repeat for several)")] = [],
                       since: date | None = None, until: date | None = None,
                       catalog_id: Annotated[list[str], Query()] = [], spread: bool = False,
                       format: Format = "json") -> Any:
        """The chips that look most like ``chip`` (its own place excluded)."""
        engine = engines.require()
        _chip_name(chip)
        filters = _query_filters(bbox, label, since, until, catalog_id)
        started = time.perf_counter()
        hits = engine.by_chip(chip, k=k, filters=filters, spread=spread)
        return _search_answer(engine, hits, time.perf_counter() - started, k, format, {"chip": chip})

    @app.post("/api/search", response_model=SearchResponse, tags=["search"])
    def search_by_examples(body: SearchRequest, format: Format = "json") -> Any:
        """More like the positive chips, less like the negative ones (Rocchio, beta 0.5)."""
        engine = engines.require()
        for chip in (*body.positives, *body.negatives):
            _chip_name(chip)
        started = time.perf_counter()
        hits = engine.query([Example(chip=c) for c in body.positives], [Example(chip=c) for c in body.negatives],
                            k=body.k, filters=_filters(body.filters), spread=body.spread)
        return _search_answer(engine, hits, time.perf_counter() - started, body.k, format,
                              {"positives": body.positives, "negatives": body.negatives})

    @app.post("/api/search/image", response_model=SearchResponse, tags=["search"], openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": f"JPEG or PNG, at most {MAX_UPLOAD_BYTES} bytes"}}}}}}})
    async def search_by_image(request: Request, k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                              bbox: Annotated[str | None, Query(description="west,south,east,north")] = None,
                              label: Annotated[list[str], Query()] = [], since: date | None = None,
                              until: date | None = None, catalog_id: Annotated[list[str], Query()] = [],
                              spread: bool = False, format: Format = "json") -> Any:
        """The chips that look most like an uploaded image (multipart field ``file``)."""
        engine = await run_in_threadpool(engines.require)  # may load a newly served index: not on the event loop
        filters = _query_filters(bbox, label, since, until, catalog_id)
        name, data = await _read_upload(request)
        check_image(data, name)
        started = time.perf_counter()
        hits = await run_in_threadpool(engine.by_image, data, k=k, filters=filters, spread=spread, name=name)
        return _search_answer(engine, hits, time.perf_counter() - started, k, format, {"image": name})

    # -- chips and places ----------------------------------------------------------------------
    @app.get("/api/chips/{chip}", response_model=ChipOut, tags=["chips"])
    def chip_info(chip: ChipParam) -> ChipOut:
        """An indexed chip: labels with probabilities, date, catalog id, outline and source COG."""
        engine = engines.require()
        _chip_name(chip)
        info = engine.describe(chip)
        source = mosaic.source_key(info["cell"], info["catalog_id"])
        return ChipOut(chip=chip, place=info["place"], cell=info["cell"], date=info["date"],
                       catalog_id=info["catalog_id"], geometry=_geojson(info["geometry"]), thumbnail=_thumbnail(chip),
                       labels=[LabelOut(label=n, probability=round(p, 4), predicted=on) for n, p, on in info["labels"]],
                       source_cog=bucket.url(source) if source else None)

    @app.get("/api/chips/{chip}/image", tags=["chips"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def chip_image(chip: ChipParam) -> Response:
        """The chip's JPEG, as published in the bucket."""
        key = chip_key(_chip_name(chip))
        if not bucket.exists(key):
            raise UnknownChipError(f"chip {chip} is not in {bucket.url('chips/')}")
        return Response(bucket.read_bytes(key), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/api/places", tags=["chips"])
    def places(bbox: Annotated[str, Query(description="west,south,east,north")],
               limit: Annotated[int, Query(ge=1, le=MAX_PLACES)] = MAX_PLACES) -> JSONResponse:
        """The chip grid in ``bbox``: each place's newest indexed chip, as GeoJSON outlines."""
        engine = engines.require()
        box = _query_filters(bbox, [], None, None, []).bbox
        items, total = engine.places_in(box, limit)
        features = [{"type": "Feature", "geometry": _geojson(it.geometry),
                     "properties": {"chip": it.chip, "place": it.place, "date": str(it.date)}} for it in items]
        return JSONResponse({"type": "FeatureCollection", "features": features, "places": total,
                             "truncated": total > len(items)}, media_type="application/geo+json")

    # -- changes -----------------------------------------------------------------------------------
    @app.get("/api/changes", response_model=ChangesResponse, tags=["changes"])
    def changes(k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
                min_score: Annotated[float | None, Query(description="only scores at or above this")] = None,
                ) -> ChangesResponse:
        """The places that changed most between consecutive acquisitions (highest score first)."""
        engine = engines.require()
        started = time.perf_counter()
        stamp = next(((o.modified, o.size) for o in bucket.list(changes_key(engine.version))), None)
        if changes_cache.get("stamp") != (engine.version, stamp):  # a new version, or chip_changes ran again
            changes_cache.update(stamp=(engine.version, stamp), table=read_changes(bucket, engine.version))
        table = changes_cache["table"]
        top = [row for row in table.slice(0, k).to_pylist() if _finite(row["score"])]  # unscored pairs sort last
        if min_score is not None:
            top = [row for row in top if row["score"] >= min_score]
        return ChangesResponse(model=ModelRef(name=engine.name, version=engine.version),
                               took_ms=round((time.perf_counter() - started) * 1000, 3), pairs=table.num_rows,
                               changes=[_change_out(r) for r in top])

    @app.get("/api/changes/{before}/{after}/map.png", tags=["changes"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def change_map_image(before: ChipParam, after: ChipParam) -> Response:
        """The change map of a place between two of its chips, as a heat overlay (RGBA PNG at the stored map's
        size: stretch it over the after chip)."""
        from imagesim_pipeline.changes.cell_changes import read_change_map
        from imagesim_pipeline.changes.maps import overlay_png

        engine = engines.require()
        b, a = _chip_name(before), _chip_name(after)
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

    # -- tiles -------------------------------------------------------------------------------------
    @app.get("/tiles/{z}/{x}/{y}.png", tags=["tiles"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def tile(z: int, x: int, y: int, date: date | None = None,
             catalog_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.]+$")] = None) -> Response:
        """A web-mercator tile of the ARD mosaic: newest acquisition first, or one date or catalog id."""
        png = mosaic.tile(z, x, y, date, catalog_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=600"})

    @app.get("/tiles/tilejson.json", tags=["tiles"])
    def tilejson(request: Request, date: date | None = None,
                 catalog_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.]+$")] = None) -> dict:
        """TileJSON for the mosaic (the tile URL carries the same date or catalog id)."""
        query = f"?date={date}" if date else (f"?catalog_id={catalog_id}" if catalog_id else "")
        return mosaic.tilejson(f"{str(request.base_url).rstrip('/')}/tiles/{{z}}/{{x}}/{{y}}.png{query}")

    # -- the page ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy's prefix, as FastAPI's own /docs
        swagger = f"{root}/static/vendor/swagger-ui"
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{swagger}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{swagger}/swagger-ui.css",
                                   swagger_favicon_url=f"{swagger}/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # no badge from validator.swagger.io

    for what, folder in (("Leaflet", LEAFLET_DIR), ("Swagger UI", SWAGGER_UI_DIR)):
        if not folder.is_dir():
            raise ImagesimError(f"{what} is missing at {folder}: run `make setup` (it runs "
                                f"`npm ci --prefix {HERE / 'web'}`) before serving the page")
    app.mount("/static/vendor/leaflet", StaticFiles(directory=LEAFLET_DIR), name="leaflet")
    app.mount("/static/vendor/swagger-ui", StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _read_upload(request: Request) -> tuple[str, bytes]:
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


__all__ = ["EngineHolder", "create_app"]
