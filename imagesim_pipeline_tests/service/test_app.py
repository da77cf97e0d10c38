"""The search service's HTTP API over the demo world indexed by a trained SMLC (FastAPI's test client)."""

from __future__ import annotations

import io
import json
from datetime import date

import mercantile
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.models.registry import set_pointer
from imagesim_pipeline.search.engine import SearchEngine
from imagesim_pipeline.service.app import create_app
from imagesim_pipeline.service.uploads import MAX_UPLOAD_BYTES
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline_tests.service.test_uploads import bomb_png


@pytest.fixture(scope="module")
def service(demo_index):
    """(client, bucket, engine) over the shared demo index; read only."""
    root, version = demo_index
    bucket = open_bucket(root)
    app = create_app(bucket, version=version)  # the test model is not promoted: pin its version
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, bucket, SearchEngine(bucket, version=version)


def _two_acquisition_chip(engine: SearchEngine) -> str:
    places, counts = np.unique(engine.store.places, return_counts=True)
    place = places[counts >= 2][len(places[counts >= 2]) // 2]
    return engine.store.chips[np.flatnonzero(engine.store.places == place)[0]]


def _png(size=(64, 64), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def test_health_names_the_model_and_index_in_use(service):
    client, bucket, engine = service
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["model"] == {"name": "smlc", "version": engine.version}
    assert body["index_vectors"] == len(engine) > 100 and body["labels"] == engine.labels
    assert {a["catalog_id"] for a in body["acquisitions"]} == set(engine.store.catalog_ids) >= {"KOTKAA", "KOTKAB"}
    w, s, e, n = body["bounds"]
    lon, lat = body["start"]
    assert w < lon < e and s < lat < n


def test_search_by_chip_matches_the_engine_and_serves_thumbnails(service):
    client, bucket, engine = service
    chip = _two_acquisition_chip(engine)
    response = client.get(f"/api/search/chip/{chip}", params={"k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["took_ms"] > 0 and body["k"] == 7 and body["model"]["version"] == engine.version
    assert [h["chip"] for h in body["hits"]] == [h.chip for h in engine.by_chip(chip, k=7)]
    assert ChipName.parse(chip).cell.id not in {h["place"] for h in body["hits"]}
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert "Server-Timing" in response.headers
    first = body["hits"][0]
    image = client.get(first["thumbnail"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == bucket.read_bytes(chip_key(ChipName.parse(first["chip"])))
    # the same results as GeoJSON
    fc = client.get(f"/api/search/chip/{chip}", params={"k": 7, "format": "geojson"})
    assert fc.headers["content-type"].startswith("application/geo+json")
    features = fc.json()["features"]
    assert [f["properties"]["chip"] for f in features] == [h["chip"] for h in body["hits"]]
    assert features[0]["geometry"]["type"] == "Polygon" and features[0]["properties"]["thumbnail"]


def test_negative_examples_and_filters_through_the_api(service):
    client, _, engine = service
    chip = _two_acquisition_chip(engine)
    first = client.post("/api/search", json={"positives": [chip], "k": 10}).json()["hits"]
    negative = first[0]["chip"]
    again = client.post("/api/search", json={"positives": [chip], "negatives": [negative], "k": 10}).json()["hits"]
    assert [h["chip"] for h in again] != [h["chip"] for h in first]
    assert ChipName.parse(negative).cell.id not in {h["place"] for h in again}
    label = engine.labels[int(np.argmax((engine.store.probs >= engine.thresholds).sum(axis=0)))]
    body = {"positives": [chip], "k": 20,
            "filters": {"labels": [label], "since": "2023-10-01", "until": "2023-12-31"}}
    hits = client.post("/api/search", json=body).json()["hits"]
    assert len(hits) == 20
    for h in hits:
        assert label in {x["label"] for x in h["labels"]} and date.fromisoformat(h["date"]) >= date(2023, 10, 1)


def test_search_by_uploaded_image_finds_the_chip(service):
    client, bucket, engine = service
    chip = engine.store.chips[len(engine) // 3]
    data = bucket.read_bytes(chip_key(ChipName.parse(chip)))
    response = client.post("/api/search/image", params={"k": 3}, files={"file": ("query.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    top = response.json()["hits"][0]
    assert top["chip"] == chip and top["score"] > 0.99


def test_chip_metadata_names_its_labels_and_source_cog(service):
    client, bucket, engine = service
    chip = engine.store.chips[0]
    body = client.get(f"/api/chips/{chip}").json()
    assert [x["label"] for x in body["labels"]] == sorted(engine.labels, key=lambda n: -engine.store.probs[0][
        engine.labels.index(n)])
    assert body["catalog_id"] == ChipName.parse(chip).catalog_id and body["cell"] == ChipName.parse(chip).tile.id
    assert body["source_cog"].endswith(f"{body['catalog_id']}-visual.tif")
    assert bucket.exists(body["source_cog"][len(bucket.url("")):])


def test_places_give_the_chip_grid_in_view(service):
    client, _, engine = service
    w, s, e, n = engine.store.item(engine.store.chips[0]).geometry.bounds
    box = f"{w - 0.01},{s - 0.005},{e + 0.01},{n + 0.005}"
    fc = client.get("/api/places", params={"bbox": box}).json()
    places = [f["properties"]["place"] for f in fc["features"]]
    assert len(places) == len(set(places)) == fc["places"] > 20 and not fc["truncated"]
    assert engine.store.places[0] in places
    few = client.get("/api/places", params={"bbox": box, "limit": 3}).json()
    assert len(few["features"]) == 3 and few["truncated"]


def test_changes_list_the_most_changed_places_first(service):
    client, bucket, _ = service
    body = client.get("/api/changes", params={"k": 5}).json()
    scores = [c["score"] for c in body["changes"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and body["pairs"] > 100
    for c in body["changes"]:
        assert c["date_before"] < c["date_after"]
        assert client.get(f"/api/chips/{c['before']}/image").status_code == 200
        assert client.get(f"/api/chips/{c['after']}/image").status_code == 200


def _tile_over(engine: SearchEngine, zoom: int, edge: bool = False) -> mercantile.Tile:
    """A tile inside the chips' deliveries, or (``edge``) on the west edge of the westernmost one."""
    i = int(np.argmin(engine.store.bounds[:, 0])) if edge else len(engine) // 2
    x0, y0, x1, y1 = engine.store.bounds[i]
    return mercantile.tile(x0 if edge else (x0 + x1) / 2, (y0 + y1) / 2, zoom)


def _rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def test_tiles_mosaic_the_ard_cogs_newest_first(service):
    client, _, engine = service
    t = _tile_over(engine, 16)
    newest = client.get(f"/tiles/{t.z}/{t.x}/{t.y}.png")
    assert newest.status_code == 200 and newest.headers["content-type"] == "image/png"
    pixels = _rgba(newest.content)
    assert pixels.shape == (256, 256, 4) and (pixels[..., 3] == 255).mean() > 0.9 and pixels[..., :3].std() > 5
    days = sorted({str(d) for d in engine.store.dates})
    older = client.get(f"/tiles/{t.z}/{t.x}/{t.y}.png", params={"date": days[0]})
    latest = client.get(f"/tiles/{t.z}/{t.x}/{t.y}.png", params={"date": days[-1]})
    assert older.status_code == latest.status_code == 200
    assert np.array_equal(_rgba(latest.content), pixels)  # the newest acquisition by default
    assert not np.array_equal(_rgba(older.content), pixels)
    # at the edge of the deliveries no-data is transparent
    edge = _tile_over(engine, 14, edge=True)
    response = client.get(f"/tiles/{edge.z}/{edge.x}/{edge.y}.png")
    assert response.status_code == 200, response.text
    alpha = _rgba(response.content)[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()
    tj = client.get("/tiles/tilejson.json").json()
    assert tj["tiles"][0].endswith("/tiles/{z}/{x}/{y}.png") and tj["minzoom"] <= 16 <= tj["maxzoom"]


BAD_REQUESTS = [
    ("unknown chip", "get", "/api/search/chip/Z35-01313111111312103_NOSUCH.jpg", {}, 404, "unknown chip id"),
    ("malformed id", "get", "/api/search/chip/not-a-chip", {}, 422, "chip"),
    ("path traversal", "get", "/api/chips/..%2F..%2F..%2Fetc%2Fpasswd/image", {}, 404, ""),
    ("dots in id", "get", "/api/chips/Z35-0131311111131210_...jpg/image", {}, 404, "not in"),
    ("k too small", "get", "/api/search/chip/{chip}?k=0", {}, 422, "k"),
    ("k too large", "get", "/api/search/chip/{chip}?k=1001", {}, 422, "k"),
    ("bad bbox", "get", "/api/search/chip/{chip}?bbox=1,2,3", {}, 422, "bbox"),
    ("unknown label", "get", "/api/search/chip/{chip}?label=volcano", {}, 422, "unknown label"),
    ("no positives", "post", "/api/search", {"json": {"positives": []}}, 422, "positives"),
    ("not an image", "post", "/api/search/image", {"files": {"file": ("x.jpg", b"GIF89a no", "image/jpeg")}}, 415,
     "not an image"),
    ("truncated image", "post", "/api/search/image", {"files": {"file": ("x.png", _png()[:-40], "image/png")}}, 422,
     "readable"),
    ("too small image", "post", "/api/search/image", {"files": {"file": ("x.png", _png((8, 8)), "image/png")}}, 422,
     "8x8"),
    ("16-bit image", "post", "/api/search/image", {"files": {"file": ("x.png", _png(mode="I;16"), "image/png")}},
     422, "mode"),
    ("too large upload", "post", "/api/search/image",
     {"files": {"file": ("x.jpg", b"\xff" * (MAX_UPLOAD_BYTES + 100_000), "image/jpeg")}}, 413, "limit"),
    ("decompression bomb", "post", "/api/search/image", {"files": {"file": ("bomb.png", bomb_png(), "image/png")}},
     413, "bomb.png is 400000000 pixels; the budget is 16777216 pixels"),
    ("bbox latitude 200 in the query", "get", "/api/search/chip/{chip}?bbox=0,200,1,201", {}, 422,
     "bbox south 200 is not a latitude"),
    ("bbox latitude 200 in the body", "post", "/api/search",
     {"json": {"positives": ["Z35-01313111111312103_KOTKAB.jpg"], "filters": {"bbox": [0, 200, 1, 201]}}}, 422,
     "filters.bbox: bbox south 200 is not a latitude: latitudes are -90..90 degrees"),
    ("bbox longitude 181 on upload", "post", "/api/search/image?bbox=-181,0,1,1",
     {"files": {"file": ("x.png", _png(), "image/png")}}, 422, "bbox west -181 is not a longitude"),
    ("bbox west of east", "get", "/api/places?bbox=10,0,5,1", {}, 422, "bbox west 10 is east of east 5"),
    ("no file field", "post", "/api/search/image", {"files": {"other": ("x.png", _png(), "image/png")}}, 422, "file"),
    ("not multipart", "post", "/api/search/image", {"content": _png()}, 415, "multipart"),
    ("tile outside", "get", "/tiles/16/0/0.png", {}, 404, "outside every ARD delivery"),
    ("tile zoom", "get", "/tiles/3/1/1.png", {}, 404, "zoom"),
    ("tile unknown date", "get", "/tiles/16/{x}/{y}.png?date=1999-01-01", {}, 404, "1999-01-01"),
    ("tile bad catalog", "get", "/tiles/16/{x}/{y}.png?catalog_id=../x", {}, 422, "catalog_id"),
]


@pytest.mark.parametrize("method,path,kwargs,status,message", [r[1:] for r in BAD_REQUESTS],
                         ids=[r[0] for r in BAD_REQUESTS])
def test_bad_input_gets_a_clear_4xx_and_no_traceback(service, method, path, kwargs, status, message):
    client, _, engine = service
    t = _tile_over(engine, 16)
    response = getattr(client, method)(path.format(chip=engine.store.chips[0], x=t.x, y=t.y), **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail and "\n" not in detail
    assert "Traceback" not in response.text and 'File "' not in response.text


def test_the_service_follows_the_latest_pointer(demo_index, tmp_path):
    root, version = demo_index
    source, bucket = open_bucket(root), open_bucket(tmp_path)
    for obj in source.list("index/"):
        bucket.write_bytes(obj.key, source.read_bytes(obj.key))
    with TestClient(create_app(bucket, refresh_s=0)) as client:
        assert client.get("/api/health").json()["status"] == "no_index"
        set_pointer(bucket, "smlc", "latest", version)  # a model is promoted while the service runs
        health = client.get("/api/health").json()
        assert health["status"] == "ok" and health["model"]["version"] == version


def test_a_missing_index_answers_404_and_an_unexpected_error_one_line(demo_model, monkeypatch):
    root, version = demo_model  # a trained model but no embeddings or index
    with TestClient(create_app(open_bucket(root), version=version), raise_server_exceptions=False) as client:
        health = client.get("/api/health").json()
        assert health["status"] == "no_index" and "similarity_index" in health["detail"]
        response = client.get("/api/search/chip/Z35-01313111111312103_KOTKAB.jpg")
        assert response.status_code == 404 and "materialize" in response.json()["detail"]
        assert client.get("/api/changes").status_code == 404
        assert client.get("/").status_code == 200  # the page and the tiles still work

        def broken(*args, **kwargs):
            raise RuntimeError("secret internals")

        monkeypatch.setattr("imagesim_pipeline.service.tiles.ArdMosaic.tile", broken)
        response = client.get("/tiles/16/1/1.png")
        assert response.status_code == 500 and "secret" not in response.text
        assert json.loads(response.text) == {"detail": "internal error: see the search service's log"}


def test_the_page_and_its_scripts_are_served_locally(service):
    client, _, _ = service
    page = client.get("/").text
    assert "/static/vendor/leaflet/leaflet.js" in page and "http" not in page.split("<body>")[1]
    assert client.get("/static/vendor/leaflet/leaflet.js").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/search/chip/{chip}", "/api/changes",
            "/tiles/{z}/{x}/{y}.png"} <= set(spec["paths"])
