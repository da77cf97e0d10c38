"""OSM for many cells from one ``.osm.pbf`` extract, in one read of the file's nodes and ways.

Passes (libosmium does the decoding; relations are a small share of any extract):

1. relations only: their tags and members, and the ids of member nodes and ways;
2. nodes and ways, with node locations from an osmium location index (``flex_mem`` by default;
   ``sparse_file_array,<file>`` or ``dense_file_array,<file>`` keeps them on disk for
   country-size extracts; ``dense_*`` suits only extracts with compact node ids): tagged nodes
   and ways go to every cell box they meet; geometries of relation-member ways (and locations of
   member nodes) are kept for step 3;
3. relations, decided from their members, with member geometry.

Selected elements are spooled to per-cell files on disk, so memory does not grow with the
number of cells or the size of the output.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import box

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.osm.elements import (
    DEFAULT_MARGIN_DEG,
    CellBox,
    OsmError,
    bounds_of,
    empty_osm_data,
    incomplete_geometry,
    latlon,
    node_element,
    sort_elements,
    way_element,
)

SPOOL_LIMIT = 50_000  # buffered elements before they are appended to the per-cell files


class _Spool:
    """Per-cell element buffers that spill to JSON-lines files once they hold too much."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.buffers: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.buffered = 0

    def add(self, cell_id: str, kind: str, element: dict[str, Any]) -> None:
        self.buffers[(cell_id, kind)].append(element)
        self.buffered += 1
        if self.buffered >= SPOOL_LIMIT:
            self.flush()

    def flush(self) -> None:
        for (cell_id, kind), elements in self.buffers.items():
            with open(self.folder / f"{cell_id}.{kind}.jsonl", "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in elements)
        self.buffers.clear()
        self.buffered = 0

    def read(self, cell_id: str, kind: str) -> list[dict[str, Any]]:
        """Everything spilled for the cell, then what is still buffered."""
        path = self.folder / f"{cell_id}.{kind}.jsonl"
        spilled = []
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                spilled = [json.loads(line) for line in fh if line.strip()]
        return spilled + self.buffers.pop((cell_id, kind), [])


class _BoxIndex:
    """Cell boxes hashed into a lon/lat lattice as coarse as the largest box: fast bbox lookups."""

    def __init__(self, boxes: list[CellBox]):
        self.boxes = boxes
        self.step = max(max(b.east - b.west, b.north - b.south) for b in boxes)
        self.bins: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, b in enumerate(boxes):
            for key in self._keys(b.west, b.south, b.east, b.north):
                self.bins[key].append(i)

    def _keys(self, west: float, south: float, east: float, north: float):
        step = self.step
        for x in range(math.floor(west / step), math.floor(east / step) + 1):
            for y in range(math.floor(south / step), math.floor(north / step) + 1):
                yield (x, y)

    def candidates(self, west: float, south: float, east: float, north: float) -> set[int]:
        found: set[int] = set()
        for key in self._keys(west, south, east, north):
            found.update(self.bins.get(key, ()))
        return {i for i in found if self.boxes[i].west <= east and self.boxes[i].east >= west
                and self.boxes[i].south <= north and self.boxes[i].north >= south}


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise OsmError(f"{path}: no such OSM extract. Download one (e.g. from download.geofabrik.de) "
                       "or set the osm source to Overpass.")
    if path.stat().st_size == 0:
        raise OsmError(f"{path}: the OSM extract is empty")


def _header(path: Path):
    import osmium

    try:
        return osmium.io.Reader(str(path), osmium.osm.osm_entity_bits.NOTHING).header()
    except RuntimeError as exc:  # libosmium reports corrupt input as RuntimeError
        raise OsmError(f"{path}: not a readable OSM extract ({exc})") from None


def _header_box(path: Path):
    """The extract's bounding box from its header, or None."""
    box_ = _header(path).box()
    if not box_.valid():
        return None
    return box(box_.bottom_left.lon, box_.bottom_left.lat, box_.top_right.lon, box_.top_right.lat)


def pbf_snapshot(path: Path) -> str | None:
    """The extract's replication timestamp from its header, if it has one."""
    header = _header(path)
    for key in ("osmosis_replication_timestamp", "timestamp"):
        value = header.get(key)
        if value:
            return value
    return None


def extract_cells(pbf: str | os.PathLike[str], cells: Iterable[ArdCell], *, margin: float = DEFAULT_MARGIN_DEG,
                  node_index: str = "flex_mem", progress: Callable[[str], None] | None = None
                  ) -> Iterator[tuple[ArdCell, dict[str, Any]]]:
    """Yield ``(cell, osm_data)`` for every cell, reading ``pbf`` once for all of them."""
    import osmium

    path = Path(pbf)
    _check_file(path)
    say = progress or (lambda _m: None)
    boxes = [CellBox.of(c, margin) for c in cells]
    if not boxes:
        return
    tree = _BoxIndex(boxes)
    union = (min(b.west for b in boxes), min(b.south for b in boxes), max(b.east for b in boxes),
             max(b.north for b in boxes))
    started = time.perf_counter()
    snapshot = pbf_snapshot(path)
    extract_box = _header_box(path)
    try:
        relations, member_nodes, member_ways = _read_relations(path)
    except RuntimeError as exc:  # libosmium reports corrupt input as RuntimeError
        raise OsmError(f"{path}: not a readable OSM extract ({exc})") from None
    say(f"{path.name}: {len(relations)} relations read; scanning nodes and ways for {len(boxes)} cell(s)")
    with tempfile.TemporaryDirectory(prefix="imagesim-osm-") as tmp:
        spool = _Spool(Path(tmp))
        node_locations: dict[int, tuple[float, float]] = {}
        way_geometry: dict[int, tuple[array, array]] = {}  # relation-member ways: refs, flat coords
        way_cells: dict[int, list[int]] = {}
        counts = {"nodes": 0, "ways": 0}
        index = node_index
        if node_index.endswith("_file_array"):
            index = f"{node_index},{Path(tmp) / 'node-locations.idx'}"
        try:
            processor = osmium.FileProcessor(str(path), osmium.osm.NODE | osmium.osm.WAY).with_locations(index)
            for obj in processor:
                if isinstance(obj, osmium.osm.Node):
                    counts["nodes"] += 1
                    loc = obj.location
                    if not loc.valid():
                        continue
                    lon, lat = loc.lon, loc.lat
                    if obj.id in member_nodes:
                        node_locations[obj.id] = (lon, lat)
                    if len(obj.tags) and union[0] <= lon <= union[2] and union[1] <= lat <= union[3]:
                        for i in tree.candidates(lon, lat, lon, lat):
                            if boxes[i].contains(lon, lat):
                                spool.add(boxes[i].cell.id, "nodes",
                                          node_element(obj.id, lon, lat, {t.k: t.v for t in obj.tags}))
                elif isinstance(obj, osmium.osm.Way):
                    counts["ways"] += 1
                    refs = [n.ref for n in obj.nodes]
                    coords = [(n.lon, n.lat) if n.location.valid() else None for n in obj.nodes]
                    if obj.id in member_ways:
                        flat = array("d", [v for c in coords for v in (c if c else (np.nan, np.nan))])
                        way_geometry[obj.id] = (array("q", refs), flat)
                    hits = _way_cells(coords, boxes, tree, union)
                    if hits:
                        if obj.id in member_ways:
                            way_cells[obj.id] = hits
                        element = way_element(obj.id, refs, coords, {t.k: t.v for t in obj.tags})
                        for i in hits:
                            spool.add(boxes[i].cell.id, "ways", element)
        except RuntimeError as exc:
            raise OsmError(f"{path}: reading the extract failed ({exc}); it is corrupt or truncated") from None
        say(f"{path.name}: {counts['nodes']} nodes, {counts['ways']} ways scanned in "
            f"{time.perf_counter() - started:.1f} s")
        for rel_id, (tags, members) in relations.items():
            rel_hits: set[int] = set()
            for mtype, ref, _role in members:
                if mtype == "w":
                    rel_hits.update(way_cells.get(ref, ()))
                elif mtype == "n" and ref in node_locations:
                    lon, lat = node_locations[ref]
                    rel_hits.update(i for i in tree.candidates(lon, lat, lon, lat) if boxes[i].contains(lon, lat))
            if rel_hits:
                element = _relation_element(rel_id, tags, members, node_locations, way_geometry)
                for i in sorted(rel_hits):
                    spool.add(boxes[i].cell.id, "relations", element)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        for b in boxes:
            data = empty_osm_data(b.cell, b, {"source": "pbf", "extract": path.name, "snapshot": snapshot,
                                              "created": created, "margin_deg": margin})
            for kind in ("nodes", "ways", "relations"):
                data[kind] = spool.read(b.cell.id, kind)
            data["provenance"]["problems"] = incomplete_geometry(data)
            if extract_box is not None and not b.geometry().within(extract_box):
                data["provenance"]["problems"].append(
                    f"{b.cell.id} is not wholly inside the bounding box of {path.name}: OSM beyond the extract "
                    "is missing here; use an extract that covers the cell")
            yield b.cell, sort_elements(data)


def _way_cells(coords, boxes: list[CellBox], tree: _BoxIndex, union) -> list[int]:
    points = [c for c in coords if c is not None]
    if not points:
        return []
    lons = [p[0] for p in points]
    lats = [p[1] for p in points]
    west, east, south, north = min(lons), max(lons), min(lats), max(lats)
    if east < union[0] or west > union[2] or north < union[1] or south > union[3]:
        return []
    return sorted(i for i in tree.candidates(west, south, east, north) if boxes[i].way_selected(coords))


def _read_relations(path: Path):
    import osmium

    relations: dict[int, tuple[dict[str, str], list[tuple[str, int, str]]]] = {}
    member_nodes: set[int] = set()
    member_ways: set[int] = set()
    for rel in osmium.FileProcessor(str(path), osmium.osm.RELATION):
        if not isinstance(rel, osmium.osm.Relation):  # the filter passes relations only
            continue
        members = [(m.type, m.ref, m.role) for m in rel.members]
        relations[rel.id] = ({t.k: t.v for t in rel.tags}, members)
        for mtype, ref, _ in members:
            if mtype == "n":
                member_nodes.add(ref)
            elif mtype == "w":
                member_ways.add(ref)
    return relations, member_nodes, member_ways


def _relation_element(rel_id: int, tags: dict[str, str], members, node_locations, way_geometry) -> dict[str, Any]:
    out_members = []
    all_coords: list[tuple[float, float] | None] = []
    for mtype, ref, role in members:
        member: dict[str, Any] = {"type": {"n": "node", "w": "way", "r": "relation"}[mtype], "ref": ref, "role": role}
        if mtype == "n" and ref in node_locations:
            lon, lat = node_locations[ref]
            member.update(latlon((lon, lat)))
            all_coords.append((lon, lat))
        elif mtype == "w" and ref in way_geometry:
            flat = way_geometry[ref][1]
            coords = [None if np.isnan(flat[i]) else (flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
            member["geometry"] = [latlon(c) for c in coords]
            all_coords.extend(coords)
        out_members.append(member)
    element: dict[str, Any] = {"type": "relation", "id": rel_id}
    bounds = bounds_of(all_coords)
    if bounds:
        element["bounds"] = bounds
    element["members"] = out_members
    if tags:
        element["tags"] = tags
    return element


def cells_in_extract(pbf: str | os.PathLike[str], cells: Iterable[ArdCell]) -> list[ArdCell]:
    """The cells whose box meets the extract's header bounding box (all cells if it has none)."""
    path = Path(pbf)
    _check_file(path)
    extract = _header_box(path)
    cells = list(cells)
    if extract is None:
        return cells
    return [c for c in cells if CellBox.of(c).geometry().intersects(extract)]
