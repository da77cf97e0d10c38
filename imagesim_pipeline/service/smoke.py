"""A smoke check of the search service (``imagesim demo`` runs it): served in-process on 127.0.0.1 for a moment."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from imagesim_pipeline.storage import Bucket


def check_service(bucket: Bucket, report: Callable[[str], None] = print) -> bool:
    """Start the search service on a free 127.0.0.1 port for a moment and ask it what a page would: health, a
    search by chip, a map tile and the page; ``report`` gets one line; whether all answered."""
    import http.client
    import socket
    import threading

    import mercantile
    import uvicorn

    from imagesim_pipeline.service.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(bucket)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def get(path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()

    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        health = json.loads(get("/api/health")[1])
        if health["status"] != "ok":
            report(f"error: the search service has no index: {health['detail']}")
            return False
        lon, lat = health["start"]
        chip = app.state.engines.get().store.sample(1)[0]
        status, body = get(f"/api/search/chip/{chip}?k=10")
        answer = json.loads(body)
        tile = mercantile.tile(lon, lat, 16)
        tile_status, png = get(f"/tiles/{tile.z}/{tile.x}/{tile.y}.png")
        page_status, _ = get("/")
        ok = status == 200 and tile_status == 200 and page_status == 200 and len(answer["hits"]) == 10
        report(f"model {health['model']['version']}, {health['index_vectors']} indexed chips; search by chip: "
               f"{len(answer.get('hits', []))} results in {answer.get('took_ms', 0):.1f} ms; tile 16/{tile.x}/"
               f"{tile.y}: {tile_status} ({len(png)} bytes PNG); page: {page_status}")
        return ok
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- parser ---------------------------------------------------------------------------------
