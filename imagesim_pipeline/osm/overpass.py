"""OSM for one cell from the Overpass API, politely.

Retries with exponential backoff and jitter on 429, 502, 503, 504, timeouts, connection
errors, HTML error pages, truncated JSON and Overpass "runtime error" remarks; honours
``Retry-After``; keeps a minimum interval between requests from this process (the Dagster
pool ``overpass`` limits concurrency across runs). After the last try it raises
:class:`OsmError` naming the cell, the endpoint and the last reason.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.osm.elements import (
    DEFAULT_MARGIN_DEG,
    CellBox,
    OsmError,
    OverpassUnavailableError,
    empty_osm_data,
    incomplete_geometry,
    sort_elements,
)

DEFAULT_ENDPOINT = "https://overpass-api.de/api/interpreter"
RETRY_STATUS = {429, 502, 503, 504}


class _TransientError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def build_query(bbox: CellBox, timeout: int, maxsize: int, date: str | None = None) -> str:
    """The Overpass QL for a cell: tagged nodes, ways and relations in the box, with geometry."""
    settings = f"[out:json][timeout:{timeout}][maxsize:{maxsize}][bbox:{bbox.overpass_bbox}]"
    if date:
        settings += f'[date:"{date}"]'
    return (f"{settings};\n(\n  node(if:count_tags() > 0);\n  way;\n  relation;\n);\nout geom;")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


@dataclass
class OverpassClient:
    """A polite Overpass API client."""

    endpoint: str = DEFAULT_ENDPOINT
    timeout: int = 180  # seconds, sent to the server and used for the HTTP read
    maxsize: int = 512 * 1024 * 1024
    retries: int = 5
    backoff: float = 2.0  # first wait; doubles each try, with jitter
    max_wait: float = 120.0
    min_interval: float = 1.0  # between requests from this process
    http_timeout: float | None = None  # HTTP read timeout (default: timeout + 15 s)
    user_agent: str = "imagesim/0.1 (+https://github.com/imagesim)"
    sleep: Callable[[float], None] = time.sleep
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _last: float = field(default=0.0, repr=False)

    def _pace(self) -> None:
        with self._lock:
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                self.sleep(wait)
            self._last = time.monotonic()

    def _once(self, query: str) -> dict[str, Any]:
        self._pace()
        try:
            read_timeout = self.http_timeout if self.http_timeout is not None else self.timeout + 15
            response = requests.post(self.endpoint, data={"data": query}, timeout=(10, read_timeout),
                                     headers={"User-Agent": self.user_agent})
        except requests.Timeout:
            raise _TransientError("the request timed out") from None
        except requests.ConnectionError as exc:
            raise _TransientError(f"cannot connect ({exc.__class__.__name__})") from None
        if response.status_code in RETRY_STATUS:
            raise _TransientError(f"HTTP {response.status_code}", _retry_after(response.headers.get("Retry-After")))
        if response.status_code != 200:
            raise OsmError(f"HTTP {response.status_code}: {response.text[:300]!r}")
        try:
            payload = response.json()
        except (ValueError, json.JSONDecodeError):
            kind = "an HTML error page" if "<html" in response.text[:500].lower() else "truncated or invalid JSON"
            raise _TransientError(f"the server sent {kind}") from None
        remark = payload.get("remark", "")
        if "runtime error" in remark:
            raise _TransientError(f"Overpass remark: {remark.strip()[:200]}")
        if "elements" not in payload:
            raise _TransientError("the response has no 'elements'")
        return payload

    def query(self, query: str, what: str) -> dict[str, Any]:
        """Run ``query``; ``what`` names the cell in errors."""
        reason = ""
        for attempt in range(1, self.retries + 1):
            try:
                return self._once(query)
            except _TransientError as exc:
                reason = str(exc)
                if attempt == self.retries:
                    break
                wait = exc.retry_after if exc.retry_after is not None else (
                    self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
                self.sleep(min(wait, self.max_wait))
            except OsmError as exc:
                raise OsmError(f"{what}: Overpass at {self.endpoint} refused the query: {exc}") from None
        raise OverpassUnavailableError(f"{what}: Overpass at {self.endpoint} failed after {self.retries} tries "
                                       f"(last: {reason}). "
                                       "Try again later, raise the timeout, or use a .osm.pbf extract instead.")

    def fetch_cell(self, cell: ArdCell, *, margin: float = DEFAULT_MARGIN_DEG, date: str | None = None
                   ) -> dict[str, Any]:
        """The ``osm_data`` document of one cell."""
        bbox = CellBox.of(cell, margin)
        query = build_query(bbox, self.timeout, self.maxsize, date)
        payload = self.query(query, cell.id)
        snapshot = payload.get("osm3s", {}).get("timestamp_osm_base")
        provenance = {"source": "overpass", "endpoint": self.endpoint, "query": query, "snapshot": snapshot,
                      "date": date, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                      "margin_deg": margin, "problems": []}
        data = empty_osm_data(cell, bbox, provenance)
        for element in payload["elements"]:
            kind = {"node": "nodes", "way": "ways", "relation": "relations"}.get(element.get("type"))
            if kind == "nodes" and not element.get("tags"):
                continue  # way vertices; their positions are in the ways' geometry
            if kind:
                data[kind].append(element)
        data["provenance"]["problems"] = incomplete_geometry(data)
        return sort_elements(data)
