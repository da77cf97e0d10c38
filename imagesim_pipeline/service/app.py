"""The search service: an HTTP API over the query engine, map tiles over the ARD COGs, and the web page.

``create_app(bucket)`` builds a FastAPI app (OpenAPI docs at ``/docs``):

* ``GET /api/health``: the model version served and the one pending, index, labels, acquisitions,
  the delivered areas and bounds.
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

The routes live in one ``APIRouter`` per concern (``routes_service``, ``routes_search``,
``routes_chips``, ``routes_changes``, ``routes_tiles``); what they share (the app's state, the
filter query parameters, chip ids) is in ``deps``.

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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from imagesim_pipeline.changes.detect import ChangesError
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.registry import DEFAULT_NAME, ModelNotFoundError
from imagesim_pipeline.search.catalog import IndexNotFoundError
from imagesim_pipeline.search.engine import UnknownChipError
from imagesim_pipeline.service import routes_changes, routes_chips, routes_search, routes_service, routes_tiles
from imagesim_pipeline.service.engines import EngineHolder, NotReadyError
from imagesim_pipeline.service.routes_changes import ChangesCache
from imagesim_pipeline.service.tiles import ArdMosaic, TileError
from imagesim_pipeline.service.uploads import UploadError
from imagesim_pipeline.storage import Bucket, StorageError
from imagesim_pipeline.storage.records import CorruptRecordError

log = logging.getLogger("imagesim.service")
HERE = Path(__file__).resolve().parent
STATIC_DIR = routes_service.STATIC_DIR  # the page and its scripts
LEAFLET_DIR = HERE / "web" / "node_modules" / "leaflet" / "dist"
SWAGGER_UI_DIR = HERE / "web" / "node_modules" / "swagger-ui-dist"  # /docs: FastAPI's default loads it from a CDN


def _status_of(exc: Exception) -> int:
    if isinstance(exc, UploadError):
        return exc.status
    if isinstance(exc, (UnknownChipError, TileError, IndexNotFoundError, ModelNotFoundError, NotReadyError,
                        ChangesError)):
        return 404
    if isinstance(exc, (StorageError, CorruptRecordError)):
        return 503
    return 422


async def _imagesim_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc))


async def _storage_error(request: Request, exc: Exception) -> Response:
    log.warning("bucket error on %s: %s", request.url.path, exc)
    return JSONResponse({"detail": f"the bucket could not be read: {exc}"}, status_code=503)


async def _validation_error(request: Request, exc: Exception) -> Response:
    problems = []
    for error in exc.errors() if isinstance(exc, RequestValidationError) else ():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return JSONResponse({"detail": "internal error: see the search service's log"}, status_code=500)


async def _server_timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
    return response


def create_app(bucket: Bucket, name: str = DEFAULT_NAME, version: str = "", refresh_s: float = 60.0) -> FastAPI:
    """The search service over ``bucket``: the served model of ``name`` unless ``version`` pins one."""
    for what, folder in (("Leaflet", LEAFLET_DIR), ("Swagger UI", SWAGGER_UI_DIR)):
        if not folder.is_dir():
            raise ImagesimError(f"{what} is missing at {folder}: run `make setup` (it runs "
                                f"`npm ci --prefix {HERE / 'web'}`) before serving the page")
    app = FastAPI(title="imagesim search", version="1", docs_url=None, redoc_url=None,  # /docs: no CDN
                  description="Search ARD chips by example, browse the ARD imagery as map tiles, list changed places.")
    app.state.engines = EngineHolder(bucket, name, version, refresh_s)
    app.state.mosaic = ArdMosaic(bucket, refresh_s)
    app.state.bucket = bucket
    app.state.changes = ChangesCache()
    app.add_exception_handler(ImagesimError, _imagesim_error)
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    app.middleware("http")(_server_timing)
    for routes in (routes_service, routes_search, routes_chips, routes_changes, routes_tiles):
        app.include_router(routes.router)
    app.mount("/static/vendor/leaflet", StaticFiles(directory=LEAFLET_DIR), name="leaflet")
    app.mount("/static/vendor/swagger-ui", StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


__all__ = ["EngineHolder", "NotReadyError", "create_app"]
