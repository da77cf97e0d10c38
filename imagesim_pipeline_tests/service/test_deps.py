"""The routes' shared pieces: one filter dependency validates the filter parameters of every search the same way."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imagesim_pipeline.search.engine import Filters
from imagesim_pipeline.service import deps
from imagesim_pipeline.service.app import create_app
from imagesim_pipeline.storage import open_bucket

CHIP = "Z35-01313111111312103_KOTKAB.jpg"


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture()
def client(tmp_path):
    """A service over an empty bucket: the filters are checked before the engine is asked for."""
    with TestClient(create_app(open_bucket(tmp_path)), raise_server_exceptions=False) as client:
        yield client


def _by_chip(client: TestClient, params: dict):
    return client.get(f"/api/search/chip/{CHIP}", params=params)


def _by_image(client: TestClient, params: dict):
    return client.post("/api/search/image", params=params, files={"file": ("x.png", _png(), "image/png")})


@pytest.mark.parametrize("params,message", [
    ({"bbox": "1,2,3"}, "must be four numbers"),
    ({"bbox": "0,200,1,201"}, "bbox south 200 is not a latitude"),
    ({"bbox": "10,0,5,1"}, "bbox west 10 is east of east 5"),
    ({"label": [f"l{i}" for i in range(33)]}, "labels: List should have at most 32 items"),
    ({"catalog_id": [f"C{i}" for i in range(65)]}, "catalog_ids: List should have at most 64 items"),
    ({"since": "2023-13-01"}, "since"),
], ids=["three numbers", "latitude", "west of east", "too many labels", "too many catalog ids", "bad date"])
def test_both_searches_by_query_string_refuse_bad_filters_alike(client, params, message):
    chip, image = _by_chip(client, params), _by_image(client, params)
    assert chip.status_code == image.status_code == 422, (chip.text, image.text)
    assert chip.json() == image.json() and message in chip.json()["detail"]


def test_good_filters_reach_the_engine_lookup(client):
    # the filters pass: the empty bucket's missing index is what answers, on both routes
    params = {"bbox": "26.9,60.4,27.0,60.6", "label": ["building"], "since": "2023-01-01"}
    assert _by_chip(client, params).status_code == _by_image(client, params).status_code == 404


def test_the_filter_parameters_are_documented_once_for_both_routes(client):
    spec = client.get("/openapi.json").json()["paths"]
    filters = {"bbox", "label", "since", "until", "catalog_id"}

    def documented(path: str, method: str) -> dict:
        return {p["name"]: p for p in spec[path][method]["parameters"] if p["name"] in filters}

    chip, image = documented("/api/search/chip/{chip}", "get"), documented("/api/search/image", "post")
    assert set(chip) == filters and chip == image
    assert chip["label"]["description"] == "predicted label (repeat for several)"


def test_the_filters_as_the_engine_takes_them():
    filters = deps.parse_filters(" 27.0 , 60.4,27.1,60.5", ["building", "road"], catalog_ids=["KOTKAB"])
    assert filters == Filters(bbox=(27.0, 60.4, 27.1, 60.5), labels=("building", "road"), catalog_ids=("KOTKAB",))
    assert deps.parse_filters() == Filters()


def test_places_refuse_an_empty_bbox_with_a_422(client):
    response = client.get("/api/places", params={"bbox": ""})
    assert response.status_code == 422 and "bbox" in response.json()["detail"]
