"""Service routes: health, the web page and the API docs (Swagger UI served from this app, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from imagesim_pipeline.service.deps import BucketDep, Engines, Mosaic
from imagesim_pipeline.service.schemas import AreaOut, Health, ModelRef

STATIC_DIR = Path(__file__).resolve().parent / "static"
router = APIRouter()


@router.get("/api/health", response_model=Health, tags=["service"])
def health(engines: Engines, mosaic: Mosaic, bucket: BucketDep) -> Health:
    """The model version served and the one pending (published, its index not complete yet), index, labels,
    the acquisitions, areas and bounds of the imagery."""
    engine = engines.get()
    return Health(status="ok" if engine else "no_index", detail=engines.problem,
                  model=ModelRef(name=engine.name, version=engine.version) if engine else None,
                  pending=ModelRef(name=engines.name, version=engines.pending) if engines.pending else None,
                  index_build=engine.build if engine else "",
                  index_vectors=len(engine) if engine else 0,
                  index_kind=engine.store.describe()["kind"] if engine else "",
                  index_engine=engine.store.engine if engine else "",
                  labels=engine.labels if engine else [], acquisitions=mosaic.acquisitions(),
                  bounds=mosaic.bounds(), start=mosaic.start(), areas=[AreaOut(**a) for a in mosaic.areas()],
                  bucket=bucket.url(""))


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The search page."""
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI over this app's OpenAPI, its scripts and styles from ``/static/vendor/swagger-ui``."""
    root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy's prefix, as FastAPI's own /docs
    swagger = f"{root}/static/vendor/swagger-ui"
    app = request.app
    return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                               swagger_js_url=f"{swagger}/swagger-ui-bundle.js",
                               swagger_css_url=f"{swagger}/swagger-ui.css",
                               swagger_favicon_url=f"{swagger}/favicon-32x32.png",
                               swagger_ui_parameters={"validatorUrl": None})  # no badge from validator.swagger.io


__all__ = ["STATIC_DIR", "router"]
