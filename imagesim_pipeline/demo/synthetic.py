"""A procedural OSM extract: a street grid, buildings, parks (real OSM structure, made-up places).

Used to render bigger demo worlds (``imagesim demo build --scale KM``) and by the benchmarks.
"""

from __future__ import annotations

import random
from pathlib import Path

import osmium

ORIGIN = (24.80, 60.10)  # lon, lat of the south-west corner


def generate_extract(path: Path, km: float, seed: int = 3) -> dict[str, int]:
    """A synthetic extract: a street grid every ~200 m, ~8 buildings per block, some parks."""
    rng = random.Random(seed)
    dlat = km / 111.32
    dlon = km / (111.32 * 0.497)  # cos(60.1 deg)
    step = 0.2 / km  # ~200 m as a fraction of the side
    node_id = way_id = rel_id = 0
    counts = {"nodes": 0, "ways": 0, "relations": 0}

    def node(writer, lon, lat, tags=None):
        nonlocal node_id
        node_id += 1
        writer.add_node(osmium.osm.mutable.Node(id=node_id, location=(lon, lat), tags=tags or {}))
        counts["nodes"] += 1
        return node_id

    with osmium.SimpleWriter(str(path), overwrite=True) as writer:
        nodes_written = []
        ways = []
        n_lines = int(1 / step)
        # Streets: horizontal and vertical lines with a vertex every ~50 m.
        for i in range(n_lines + 1):
            for horizontal in (True, False):
                refs = []
                for j in range(4 * n_lines + 1):
                    t = j / (4 * n_lines)
                    lon = ORIGIN[0] + (t if horizontal else i * step) * dlon
                    lat = ORIGIN[1] + (i * step if horizontal else t) * dlat
                    refs.append(node(writer, lon, lat))
                ways.append((refs, {"highway": rng.choice(["residential", "primary", "service", "footway"]),
                                    "name": f"Street {i}{'H' if horizontal else 'V'}"}))
        # Buildings: small closed squares inside blocks, some tagged POI nodes.
        parks = []
        for bx in range(n_lines):
            for by in range(n_lines):
                for _ in range(8):
                    cx = (bx + rng.uniform(0.15, 0.85)) * step
                    cy = (by + rng.uniform(0.15, 0.85)) * step
                    size = rng.uniform(0.00005, 0.00015)
                    corners = [(cx, cy), (cx + size, cy), (cx + size, cy + size), (cx, cy + size)]
                    refs = [node(writer, ORIGIN[0] + x * dlon, ORIGIN[1] + y * dlat) for x, y in corners]
                    ways.append((refs + refs[:1], {"building": rng.choice(["yes", "house", "apartments"])}))
                if rng.random() < 0.3:
                    node(writer, ORIGIN[0] + (bx + 0.5) * step * dlon, ORIGIN[1] + (by + 0.5) * step * dlat,
                         {"amenity": rng.choice(["cafe", "school", "bench"])})
                if rng.random() < 0.05:
                    parks.append(len(ways) - 1)
        for refs, tags in ways:
            way_id += 1
            writer.add_way(osmium.osm.mutable.Way(id=way_id, nodes=refs, tags=tags))
            counts["ways"] += 1
        for w in parks:
            rel_id += 1
            writer.add_relation(osmium.osm.mutable.Relation(
                id=rel_id, members=[("w", w + 1, "outer")], tags={"type": "multipolygon", "leisure": "park"}))
            counts["relations"] += 1
        del nodes_written
    bounds = (ORIGIN[0], ORIGIN[1], ORIGIN[0] + dlon, ORIGIN[1] + dlat)
    counts["bounds"] = bounds
    return counts
