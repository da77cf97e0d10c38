"""Serve many cells from one read of a PBF extract, across separate per-cell runs.

The first run that needs a cell of an extract reads the extract once for that cell and for
every other requested cell not yet done, and stores each cell's document under
``osm/pbf-cache/<fingerprint>/<cell>.json`` in the bucket (shared by all workers). Later runs
for those cells only copy their document. The fingerprint covers the extract's name, size
and modification time and the selection margin, so a new extract never serves stale data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.osm.elements import OsmError
from imagesim_pipeline.osm.pbf import cells_in_extract, extract_cells
from imagesim_pipeline.storage import Bucket, StorageError, layout


@contextlib.contextmanager
def resolve_pbf(bucket: Bucket, pbf: str) -> Iterator[tuple[Path, str]]:
    """A local path for ``pbf`` (a local file, or a key in the bucket) and its fingerprint."""
    path = Path(pbf).expanduser()
    if path.is_file():
        stat = path.stat()
        yield path, f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"
        return
    try:
        objects = [o for o in bucket.list(pbf) if o.key == pbf.lstrip("/")]
    except StorageError:
        objects = []
    if not objects:
        raise OsmError(f"OSM extract {pbf!r} is neither a local file nor a key in {bucket.uri}. Set the osm "
                       "resource's pbf to an existing .osm.pbf (e.g. from download.geofabrik.de).")
    obj = objects[0]
    with bucket.local_copy(obj.key) as local:
        yield local, f"{obj.key}:{obj.size}:{obj.modified.isoformat()}"


def covering_extract(bucket: Bucket, pbfs: list[str], cell: ArdCell, optional: Iterable[str] = ()) -> str | None:
    """The first extract whose header bounding box meets the cell; None when no configured one does.

    Extracts in ``optional`` (the demo world's synthetic extract, listed by default) are passed
    over when the bucket does not hold them; any other missing extract is an ``OsmError``.
    """
    optional = set(optional)
    for pbf in pbfs:
        try:
            with resolve_pbf(bucket, pbf) as (path, _):
                if cells_in_extract(path, [cell]):
                    return pbf
        except OsmError:
            if pbf not in optional:
                raise
    return None


def choose_extract(bucket: Bucket, pbfs: list[str], cell: ArdCell, optional: Iterable[str] = ()) -> str:
    """:func:`covering_extract`, else the first extract (whose document for the cell is then empty)."""
    return covering_extract(bucket, pbfs, cell, optional) or pbfs[0]


def uncovered(cell: ArdCell, pbfs: list[str]) -> str:
    """The problem an ``osm_data`` document records when no configured extract covers its cell."""
    names = ", ".join(Path(p).name for p in pbfs)
    return (f"no configured OSM extract covers {cell.id} (IMAGESIM_OSM_PBF lists {names}): its osm_data is empty; "
            "add an extract that covers the cell (e.g. a country from download.geofabrik.de) to IMAGESIM_OSM_PBF")


def cache_prefix(fingerprint: str, margin: float) -> str:
    """The cache folder of an extract (by fingerprint) cut with ``margin``."""
    digest = hashlib.sha256(f"{fingerprint}|{margin}".encode()).hexdigest()[:16]
    return f"{layout.OSM_CACHE}/{digest}/"


def osm_for_cell(bucket: Bucket, pbf: str, cell: ArdCell, companions: Iterable[ArdCell], *, margin: float,
                 node_index: str = "flex_mem", progress: Callable[[str], None] | None = None
                 ) -> tuple[dict[str, Any], bool, int]:
    """``cell``'s document from the extract: (data, served from cache, cells extracted now)."""
    with resolve_pbf(bucket, pbf) as (path, fingerprint):
        prefix = cache_prefix(fingerprint, margin)
        key = f"{prefix}{cell.id}.json"
        cached = {o.key for o in bucket.list(prefix)}
        if key in cached:
            return json.loads(bucket.read_bytes(key)), True, 0
        todo = [cell] + [c for c in cells_in_extract(path, companions)
                         if c != cell and f"{prefix}{c.id}.json" not in cached]
        result = None
        for done, data in extract_cells(path, todo, margin=margin, node_index=node_index, progress=progress):
            bucket.write_bytes(f"{prefix}{done.id}.json", json.dumps(data, separators=(",", ":")).encode())
            if done == cell:
                result = data
        assert result is not None
        return result, False, len(todo)
