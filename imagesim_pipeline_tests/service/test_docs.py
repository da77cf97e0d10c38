"""The API docs at /docs work offline: Swagger UI's scripts and styles come from the app, never a CDN."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.service import app as service_app
from imagesim_pipeline.service.app import create_app
from imagesim_pipeline.storage import open_bucket

SWAGGER = "/static/vendor/swagger-ui/"


@pytest.fixture()
def client(tmp_path):
    """A service over an empty bucket: no model, no index; the docs need neither."""
    with TestClient(create_app(open_bucket(tmp_path)), raise_server_exceptions=False) as client:
        yield client


def test_docs_load_swagger_ui_from_the_app(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assets = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert f"{SWAGGER}swagger-ui-bundle.js" in assets and f"{SWAGGER}swagger-ui.css" in assets
    assert all(url.startswith(SWAGGER) for url in assets), assets
    assert "cdn" not in html.lower() and "http://" not in html and "https://" not in html
    assert "'/openapi.json'" in html and '"validatorUrl": null' in html

    for url, kind, marker in ((f"{SWAGGER}swagger-ui-bundle.js", "javascript", "SwaggerUIBundle"),
                              (f"{SWAGGER}swagger-ui.css", "text/css", ".swagger-ui")):
        asset = client.get(url)
        assert asset.status_code == 200 and kind in asset.headers["content-type"], url
        assert marker in asset.text
    favicon = [url for url in assets if "favicon" in url]
    assert favicon and client.get(favicon[0]).status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_no_cdn_docs_are_left(client):
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page loads from a CDN: not served


def test_a_missing_swagger_ui_says_run_make_setup(tmp_path, monkeypatch):
    monkeypatch.setattr(service_app, "SWAGGER_UI_DIR", tmp_path / "nowhere")
    with pytest.raises(ImagesimError, match="Swagger UI is missing at .*nowhere: run `make setup`"):
        create_app(open_bucket(tmp_path))
