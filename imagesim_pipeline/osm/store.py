"""Where ``osm_data.json`` lives in the bucket, and the entry point for notebooks."""

from __future__ import annotations

import json
from typing import Any

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.osm.elements import OsmError, tag_summary
from imagesim_pipeline.storage import Bucket, StorageError, layout, open_bucket


def osm_key(cell: ArdCell) -> str:
    """The key of the cell's OSM document."""
    return layout.osm_key(cell.id)


def write_osm_data(bucket: Bucket, cell: ArdCell, data: dict[str, Any]) -> str:
    """Write a cell's document atomically; returns its key."""
    key = osm_key(cell)
    bucket.write_bytes(key, json.dumps(data, separators=(",", ":")).encode("utf-8"))
    return key


def read_osm_data(bucket: Bucket, cell: ArdCell) -> dict[str, Any]:
    """The cell's OSM document; :class:`OsmError` when missing or unreadable."""
    key = osm_key(cell)
    try:
        return json.loads(bucket.read_bytes(key))
    except StorageError:
        raise OsmError(f"{bucket.url(key)} does not exist: materialize osm_data for {cell.id} first") from None
    except json.JSONDecodeError as exc:
        raise OsmError(f"{bucket.url(key)} is not valid JSON ({exc}); "
                       f"materialize osm_data for {cell.id} again") from None


def fetch_osm_by_quadkey(zone: int, data_path: str, quadkey: str | None = None) -> dict[str, Any]:
    """Tag summaries of the ``osm_data.json`` files under a bucket, in the spirit of the reference.

    ``data_path`` is the bucket root (folder or ``s3://``). Returns, per cell id of ``zone``
    (or only ``quadkey``), ``{"nodes": {"count", "top_tags"}, "ways": ..., "relations": ...}``.
    """
    bucket = open_bucket(data_path)
    prefix = f"{layout.ARD}{zone:02d}/" + (f"{quadkey}/" if quadkey else "")
    result: dict[str, Any] = {}
    for obj in bucket.list(prefix):
        if obj.key.endswith("/osm_data.json"):
            cell = ArdCell.parse(f"{zone}/{obj.key.split('/')[2]}")
            result[cell.id] = tag_summary(read_osm_data(bucket, cell))
    return result
