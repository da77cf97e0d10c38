"""Benchmark: labelling 1 000 000 chip footprints against 1 000 000 generated OSM features.

The labelling stage runs per level-12 cell (5 km, 1024 chips at zoom 17). So the default run is
1000 contiguous level-12 cells of UTM zone 35 (the first 1000 of a 32 x 32 block around
Z35-013133111113, SE Finland) x 1024 footprints = 1 024 000 chips, with 1000 generated OSM features per cell =
1 000 000 features. Each cell gets an ``osm_data.json`` (Overpass ``out geom`` elements in WGS84,
made deterministically from a seed): ~55 % building polygons (8-30 m, a few self-intersecting
"bow-ties" that must be repaired), ~25 % road lines, ~8 % landuse/natural/leisure polygons
(200-1500 m, overlapping; two of them multipolygon relations with a hole), ~2 % railway and
waterway lines, ~10 % tagged nodes (amenities, matching no label).

Generation is not timed: all documents are written to disk first. What is timed, per cell, is
what the real stage does with them: read the file + ``json.loads`` + ``osm_features`` + the
1024 footprints (``ArdCell.children(17)``) + ``label_footprints`` with the default vocabulary.
Each variant runs in its own spawned process (``_measure.measure``), measured in the same run:

* imagesim, P processes: a pool of P workers over all cells (``imap_unordered``), the parent
  keeping only per-cell counts;
* the same over 1/10 of the cells: peak RSS should be about the same (memory does not grow with
  the chip count);
* imagesim, 1 process, over a few sample cells (all 1024 chips each);
* naive: for sampled chips of the same cells, a Python loop over every feature of the cell
  (``box.intersects(geom)``, then the clipped area / length / count per label, polygons of one
  label unioned per chip so overlaps do not count twice). Compared twice with the 1-process
  run's steady state (its per-cell step times, without start-up): the labelling step alone
  (naive chip loop vs ``children`` + ``label_footprints``), and whole cells (the same read and
  parse plus the naive loop extrapolated to 1024 chips). Its labels are also compared with
  imagesim's, as a check of the result.

How to read it: chips/s are chips labelled per second of wall time (the pool's, start-up
included); "peak RSS" is the largest single process (parent or a worker; ``ru_maxrss``), and
"sum bound" adds the parent's peak to P x the largest worker peak. The "per cell" line splits
the summed worker time into its steps. The "machine" line says how much CPU other processes
took during the main run (on a shared machine, read the rates with it).

Usage: python benchmarks/bench_labels.py [--cells 1000] [--features-per-cell 1000] [--processes 2]
       [--naive-cells 3] [--naive-chips 128] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from _measure import busy_cpu_s, measure

from imagesim_pipeline.ard.grid import ArdCell, in_zone_grid

CENTRE = ArdCell.parse("Z35-013133111113")
CHIP_ZOOM = 17
MARGIN_M = 50.0  # features a little outside the cell, as the real selection keeps them (~50 m)
SEED = 20240101
AIM_S = 120.0


# --- the cells ----------------------------------------------------------------------------------
def block_cells(n: int) -> list[str]:
    """``n`` contiguous level-12 cells (row by row) of a square block centred on CENTRE."""
    side = math.ceil(math.sqrt(n))
    x0, y0 = CENTRE.tile
    x0, y0 = x0 - side // 2, y0 - side // 2
    cells = [ArdCell.from_tile(CENTRE.zone, x0 + i % side, y0 + i // side, CENTRE.zoom) for i in range(n)]
    return [c.id for c in cells]


# --- the generator (not timed) ------------------------------------------------------------------
HIGHWAYS = (["residential"] * 10 + ["service"] * 5 + ["primary"] * 2 + ["tertiary"] * 2 + ["footway"])
LANDUSE = ([{"landuse": "residential"}] * 6 + [{"landuse": "forest"}] * 5 + [{"landuse": "farmland"}] * 3
           + [{"landuse": "industrial"}] * 2 + [{"natural": "water"}] * 2 + [{"leisure": "park"}] * 2)
LINEAR = [{"railway": "rail"}, {"railway": "tram"}, {"waterway": "stream"}, {"waterway": "river"}]
AMENITIES = ["bench", "cafe", "restaurant", "post_box", "waste_basket", "school", "pharmacy", "bicycle_parking"]
BUILDINGS = ["yes"] * 6 + ["house", "apartments", "garage", "shed"]


def _polyline(rng: np.random.Generator, start: np.ndarray, n: int, length: float) -> np.ndarray:
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, n - 1))
    step = length / (n - 1)
    xy = np.cumsum(np.column_stack([np.cos(heading), np.sin(heading)]) * step, axis=0)
    return np.vstack([start, start + xy])


def _blob(rng: np.random.Generator, centre: np.ndarray, radius: float, n: int) -> np.ndarray:
    """A star-shaped (so simple) closed ring of ``n`` vertices."""
    angles = (np.arange(n) + rng.uniform(0, 0.8, n)) * (2 * np.pi / n) + rng.uniform(0, 2 * np.pi)
    radii = radius * rng.uniform(0.65, 1.0, n)
    ring = centre + np.column_stack([np.cos(angles), np.sin(angles)]) * radii[:, None]
    return np.vstack([ring, ring[:1]])


@lru_cache(maxsize=8)
def _to_wgs84(epsg: int):
    from pyproj import Transformer

    return Transformer.from_crs(epsg, 4326, always_xy=True)


def make_osm_data(cell_id: str, index: int, n_features: int) -> dict:
    """An ``osm_data.json``-like document of ``n_features`` tagged elements for the cell."""
    from imagesim_pipeline.osm.elements import CellBox, empty_osm_data, node_element

    cell = ArdCell.parse(cell_id)
    rng = np.random.default_rng([SEED, index])
    xmin, ymin, xmax, ymax = cell.bounds
    lo, hi = np.array([xmin - MARGIN_M, ymin - MARGIN_M]), np.array([xmax + MARGIN_M, ymax + MARGIN_M])

    positions = iter(rng.uniform(lo, hi, size=(n_features, 2)))  # one per feature

    def anywhere() -> np.ndarray:
        return next(positions)

    n_nodes = round(0.10 * n_features)
    n_buildings = round(0.55 * n_features)
    n_roads = round(0.25 * n_features)
    n_landuse = round(0.08 * n_features)
    n_linear = n_features - n_nodes - n_buildings - n_roads - n_landuse
    n_bowties = min(3, n_buildings)
    n_relations = 2 if n_landuse >= 10 else 0

    shapes: list[tuple[str, np.ndarray, dict]] = []  # (kind, UTM coords, tags); kind: node/way/relation
    for _ in range(n_nodes):
        shapes.append(("node", anywhere()[None], {"amenity": str(rng.choice(AMENITIES))}))
    for i in range(n_buildings):
        w, h = rng.uniform(8, 30, 2)
        a = rng.uniform(0, np.pi)
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        corners = anywhere() + corners @ rot.T
        if i < n_bowties:  # self-intersecting: 0 1 3 2
            corners = corners[[0, 1, 3, 2]]
        shapes.append(("way", np.vstack([corners, corners[:1]]), {"building": str(rng.choice(BUILDINGS))}))
    for _ in range(n_roads):
        tags = {"highway": str(rng.choice(HIGHWAYS))}
        if rng.random() < 0.01:
            tags["tunnel"] = "yes"
        shapes.append(("way", _polyline(rng, anywhere(), int(rng.integers(3, 11)), rng.uniform(50, 400)), tags))
    for _ in range(n_linear):
        shapes.append(("way", _polyline(rng, anywhere(), int(rng.integers(5, 16)), rng.uniform(200, 1500)),
                       dict(LINEAR[int(rng.integers(len(LINEAR)))])))
    for i in range(n_landuse):
        centre, radius = anywhere(), rng.uniform(200, 1500) / 2
        outer = _blob(rng, centre, radius, int(rng.integers(6, 15)))
        tags = dict(LANDUSE[int(rng.integers(len(LANDUSE)))])
        if i < n_relations:  # a multipolygon relation: the outer ring and a hole
            inner = _blob(rng, centre, radius * 0.3, 7)
            shapes.append(("relation", np.vstack([outer, inner]), {"type": "multipolygon", **tags,
                                                                  "_split": len(outer)}))
        else:
            shapes.append(("way", outer, tags))

    # One projection call for all vertices, then split back.
    sizes = np.array([len(c) for _, c, _ in shapes])
    utm = np.vstack([c for _, c, _ in shapes])
    lon, lat = _to_wgs84(cell.epsg).transform(utm[:, 0], utm[:, 1])
    lonlat = np.round(np.column_stack([lon, lat]), 7).tolist()
    starts = np.concatenate([[0], np.cumsum(sizes)])

    data = empty_osm_data(cell, CellBox.of(cell), {"source": "bench_labels", "snapshot": "2024-01-01T00:00:00Z",
                                                   "problems": []})
    next_id = 1_000_000 * (index + 1)

    def way_json(coords: list, tags: dict | None) -> dict:
        nonlocal next_id
        refs = list(range(next_id, next_id + len(coords)))
        if coords[0] == coords[-1] and len(coords) > 1:
            refs[-1] = refs[0]
        next_id += len(coords)
        lons, lats = [c[0] for c in coords], [c[1] for c in coords]
        way = {"type": "way", "id": next_id,
               "bounds": {"minlat": min(lats), "minlon": min(lons), "maxlat": max(lats), "maxlon": max(lons)},
               "nodes": refs, "geometry": [{"lat": c[1], "lon": c[0]} for c in coords]}
        next_id += 1
        if tags:
            way["tags"] = tags
        return way

    for (kind, _, tags), s, e in zip(shapes, starts[:-1], starts[1:], strict=True):
        coords = lonlat[s:e]
        if kind == "node":
            next_id += 1
            data["nodes"].append(node_element(next_id, coords[0][0], coords[0][1], tags))
        elif kind == "way":
            data["ways"].append(way_json(coords, tags))
        else:
            tags = dict(tags)
            split = tags.pop("_split")
            members = []
            for role, ring in (("outer", coords[:split]), ("inner", coords[split:])):
                member = way_json(ring, None)  # untagged member ways come with the relation
                data["ways"].append(member)
                members.append({"type": "way", "ref": member["id"], "role": role, "geometry": member["geometry"]})
            next_id += 1
            data["relations"].append({"type": "relation", "id": next_id, "members": members, "tags": tags})
    return data


def _generate_one(job: tuple[str, int, int, str]) -> int:
    cell_id, index, n_features, path = job
    text = json.dumps(make_osm_data(cell_id, index, n_features), separators=(",", ":"))
    Path(path).write_text(text)
    return len(text)


def _generate(folder: str, cells: list[str], n_features: int, processes: int) -> int:
    jobs = [(c, i, n_features, str(Path(folder) / f"{c}.osm_data.json")) for i, c in enumerate(cells)]
    with mp.get_context("spawn").Pool(processes) as pool:
        return sum(pool.imap_unordered(_generate_one, jobs, chunksize=8))


# --- imagesim's labelling (timed) ---------------------------------------------------------------
_VOCABULARY = None


def _init_worker() -> None:
    global _VOCABULARY
    from imagesim_pipeline.labels.vocabulary import load_vocabulary

    _VOCABULARY = load_vocabulary()


def _label_one(path: str) -> dict:
    """Label one cell as the stage does; only counts go back."""
    from imagesim_pipeline.labels.labeller import label_footprints
    from imagesim_pipeline.labels.osm_geometry import osm_features

    t0 = time.perf_counter()
    data = json.loads(Path(path).read_bytes())
    t1 = time.perf_counter()
    cell = ArdCell.parse(data["cell"])
    features = osm_features(data, cell.epsg)
    t2 = time.perf_counter()
    footprints = cell.children(CHIP_ZOOM)
    t3 = time.perf_counter()
    result = label_footprints(features, _VOCABULARY, footprints)
    t4 = time.perf_counter()
    return {"chips": len(footprints), "features": len(features), "kinds": features.kind_counts(),
            "repaired": features.repaired, "problems": len(features.problems),
            "present": result.present.sum(axis=0).tolist(), "unlabelled": int((~result.present.any(axis=1)).sum()),
            "seconds": [t1 - t0, t2 - t1, t3 - t2, t4 - t3],
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _label_cells(paths: list[str], processes: int, report: str) -> int:
    """Label every cell (in a pool of ``processes`` workers, or inline for 1); writes a summary to ``report``."""
    totals = {"cells": 0, "chips": 0, "features": 0, "repaired": 0, "problems": 0, "unlabelled": 0,
              "kinds": {}, "present": None, "seconds": [0.0] * 4, "worker_rss_mb": 0.0}
    started = time.perf_counter()

    def add(summary: dict) -> None:
        totals["cells"] += 1
        for key in ("chips", "features", "repaired", "problems", "unlabelled"):
            totals[key] += summary[key]
        for kind, n in summary["kinds"].items():
            totals["kinds"][kind] = totals["kinds"].get(kind, 0) + n
        present = np.asarray(summary["present"], dtype=np.int64)
        totals["present"] = present if totals["present"] is None else totals["present"] + present
        totals["seconds"] = [a + b for a, b in zip(totals["seconds"], summary["seconds"], strict=True)]
        totals["worker_rss_mb"] = max(totals["worker_rss_mb"], summary["worker_rss_mb"])
        if totals["cells"] % 50 == 0:
            print(f"  [{processes}p] {totals['cells']}/{len(paths)} cells, {totals['chips']:,} chips, "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    if processes == 1:
        _init_worker()
        for path in paths:
            add(_label_one(path))
    else:
        pool = mp.get_context("spawn").Pool(processes, initializer=_init_worker)
        for summary in pool.imap_unordered(_label_one, paths, chunksize=2):
            add(summary)
        pool.close()
        pool.join()  # workers waited for: their peak RSS counts in RUSAGE_CHILDREN
    totals["present"] = totals["present"].tolist() if totals["present"] is not None else []
    totals["parent_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    totals["cpu_s"] = sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage,
                                                               (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    Path(report).write_text(json.dumps(totals))
    return totals["chips"]


# --- naive: a Python loop over every feature, per chip ------------------------------------------
def _naive(paths: list[str], chips_per_cell: int, report: str) -> int:
    import shapely
    from shapely.geometry import box

    from imagesim_pipeline.labels.labeller import label_footprints, match_labels
    from imagesim_pipeline.labels.osm_geometry import LINE, POINT, POLYGON, osm_features
    from imagesim_pipeline.labels.vocabulary import load_vocabulary

    vocabulary = load_vocabulary()
    n_labels = len(vocabulary)
    loop_s = setup_s = 0.0
    chips = agree = 0
    max_area_diff = max_length_diff = 0.0
    disagreements: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_bytes())
        cell = ArdCell.parse(data["cell"])
        features = osm_features(data, cell.epsg)
        footprints = cell.children(CHIP_ZOOM)
        sample = list(range(0, len(footprints), max(1, len(footprints) // chips_per_cell)))[:chips_per_cell]
        started = time.perf_counter()  # per-cell set-up: which features carry which labels
        matches = match_labels(features, vocabulary)
        labelled = [(features.geometries[i], int(features.kinds[i]), m)
                    for i, m in enumerate(matches) if m and features.geometries[i] is not None]
        setup_s += time.perf_counter() - started
        started = time.perf_counter()  # the per-chip loop
        present = np.zeros((len(sample), n_labels), dtype=bool)
        area = np.zeros((len(sample), n_labels))
        length = np.zeros((len(sample), n_labels))
        for row, f in enumerate(sample):
            chip = box(*footprints[f].bounds)
            pieces: dict[int, list] = {}
            count = np.zeros(n_labels, dtype=np.int64)
            for geom, kind, label_ids in labelled:
                if not chip.intersects(geom):
                    continue
                if kind == POINT:
                    count[label_ids] += 1
                    continue
                clipped = chip.intersection(geom)
                for label in label_ids:
                    if kind == POLYGON:
                        pieces.setdefault(label, []).append(clipped)
                    elif kind == LINE:
                        length[row, label] += clipped.length
            for label, parts in pieces.items():
                merged = parts[0] if len(parts) == 1 else shapely.union_all(parts)
                area[row, label] = min(1.0, merged.area / chip.area)
            for i, label in enumerate(vocabulary.labels):
                present[row, i] = ((area[row, i] > 0 and area[row, i] >= label.min_area_share)
                                   or (length[row, i] > 0 and length[row, i] >= label.min_length_m)
                                   or ("point" in label.geometry and count[i] >= label.min_count))
        loop_s += time.perf_counter() - started
        chips += len(sample)
        # Not timed: imagesim's answer for the same chips.
        result = label_footprints(features, vocabulary, [footprints[f] for f in sample])
        same = (result.present == present).all(axis=1)
        agree += int(same.sum())
        for row in np.flatnonzero(~same)[:3]:
            diff = np.flatnonzero(result.present[row] != present[row])
            disagreements.append(f"{footprints[sample[row]].id}: " + ", ".join(
                f"{vocabulary.names[j]} area {result.area_share[row, j]:.4f}/{area[row, j]:.4f} "
                f"length {result.length_m[row, j]:.1f}/{length[row, j]:.1f}" for j in diff))
        max_area_diff = max(max_area_diff, float(np.abs(result.area_share - area).max()))
        max_length_diff = max(max_length_diff, float(np.abs(result.length_m - length).max()))
    Path(report).write_text(json.dumps({"chips": chips, "loop_s": loop_s, "setup_s": setup_s, "agree": agree,
                                        "max_area_diff": max_area_diff, "max_length_diff": max_length_diff,
                                        "disagreements": disagreements}))
    return chips


# --- the report ---------------------------------------------------------------------------------
def _run(paths: list[str], processes: int, tmp: str, name: str) -> tuple[float, float, dict]:
    report = str(Path(tmp) / f"{name}.json")
    busy, started = busy_cpu_s(), time.perf_counter()
    seconds, _, peak = measure(_label_cells, paths, processes, report)
    result = json.loads(Path(report).read_text())
    after, result["window_s"] = busy_cpu_s(), time.perf_counter() - started  # process start-up included
    # CPU time the machine spent on anything but this run (other users' work shows here).
    result["other_cpu_s"] = None if busy is None or after is None else max(0.0, after - busy - result["cpu_s"])
    return seconds, peak, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000, help="level-12 cells (1024 chips each)")
    parser.add_argument("--features-per-cell", type=int, default=1000, help="generated OSM features per cell")
    parser.add_argument("--processes", type=int, default=2, help="worker processes of the main variant")
    parser.add_argument("--naive-cells", type=int, default=3, help="sample cells for the 1-process and naive runs")
    parser.add_argument("--naive-chips", type=int, default=128, help="chips per sample cell labelled the naive way")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: 40 cells")
    args = parser.parse_args()
    if args.quick:
        args.cells = 40
    cells = block_cells(args.cells)
    small = block_cells(max(1, args.cells // 10))
    sample = cells[:: max(1, len(cells) // args.naive_cells)][: args.naive_cells]
    assert set(small) <= set(cells), "the 1/10 block must lie inside the full block"
    bad = [c for c in cells if not in_zone_grid(ArdCell.parse(c))]
    if bad:
        raise SystemExit(f"cells outside zone {CENTRE.zone}'s grid: {bad[:5]}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "osm"
        folder.mkdir()
        started = time.perf_counter()
        print(f"generating {len(cells)} osm_data.json documents ...", file=sys.stderr, flush=True)
        total_bytes = measure(_generate, str(folder), cells, args.features_per_cell, max(2, os.cpu_count() or 2))[1]
        path = {c: str(folder / f"{c}.osm_data.json") for c in cells}
        print(f"data: {len(cells)} level-12 cells of zone {CENTRE.zone} (a block around {CENTRE.id}), "
              f"{args.features_per_cell} generated features each, {total_bytes / 1e6:.0f} MB of osm_data.json "
              f"(generated in {time.perf_counter() - started:.0f} s, not timed); {len(cells) * 4 ** (CHIP_ZOOM - 12):,} "
              f"chip footprints at zoom {CHIP_ZOOM}")
        print("timed per cell: read file + json.loads + osm_features + children(17) + label_footprints "
              "(default 13-label vocabulary)")

        main_t, main_rss, main = _run([path[c] for c in cells], args.processes, tmp, "main")
        small_t, small_rss, small_r = _run([path[c] for c in small], args.processes, tmp, "small")
        one_t, one_rss, one = _run([path[c] for c in sample], 1, tmp, "one")
        naive_report = str(Path(tmp) / "naive.json")
        _, _, naive_rss = measure(_naive, [path[c] for c in sample], args.naive_chips, naive_report)
        naive = json.loads(Path(naive_report).read_text())
        naive_rate = naive["chips"] / naive["loop_s"]
        # Steady state of the 1-process run (its wall also holds imports and first-call set-up):
        # read+parse = read + json.loads + osm_features; label = children(17) + label_footprints.
        one_parse_s, one_label_s = sum(one["seconds"][:2]), sum(one["seconds"][2:])
        one_rate = one["chips"] / (one_parse_s + one_label_s)
        # The naive way for whole cells: the same read+parse, its per-cell set-up, 1024 chips of its loop.
        naive_cell_s = (one_parse_s + naive["setup_s"]) / len(sample) + 4 ** (CHIP_ZOOM - 12) / naive_rate

        def row(name: str, result: dict, seconds: float, rss: float, processes: int) -> str:
            bound = result["parent_rss_mb"] + (processes * result["worker_rss_mb"] if processes > 1 else 0)
            return (f"{name:<34}{result['cells']:>6}{result['chips']:>12,}{result['features']:>12,}{seconds:>9.1f}"
                    f"{result['chips'] / seconds:>10,.0f}{rss:>10.0f}{bound:>10.0f}")

        print()
        print(f"{'variant':<34}{'cells':>6}{'chips':>12}{'features':>12}{'wall s':>9}{'chips/s':>10}"
              f"{'peak MB':>10}{'sum bound':>10}")
        print(row(f"imagesim, {args.processes} processes", main, main_t, main_rss, args.processes))
        print(row(f"imagesim, {args.processes} processes, 1/10 cells", small_r, small_t, small_rss, args.processes))
        print(row("imagesim, 1 process, sample cells", one, one_t, one_rss, 1))
        print(f"{'naive chip loop, 1 process, sample':<34}{len(sample):>6}{naive['chips']:>12,}{'':>12}"
              f"{naive['loop_s']:>9.1f}{naive_rate:>10,.1f}{naive_rss:>10.0f}")
        print()
        per_cell = [s / main["cells"] * 1000 for s in main["seconds"]]
        print(f"per cell (worker time, {args.processes} processes): read+json.loads {per_cell[0]:.0f} ms, "
              f"osm_features {per_cell[1]:.0f} ms, children(17) {per_cell[2]:.0f} ms, "
              f"label_footprints {per_cell[3]:.0f} ms = {sum(per_cell):.0f} ms; "
              f"worker busy {sum(main['seconds']) / (main_t * args.processes):.0%} of wall")
        names = __import__("imagesim_pipeline.labels.vocabulary", fromlist=["x"]).load_vocabulary().names
        shares = ", ".join(f"{n} {c / main['chips']:.1%}" for n, c in zip(names, main["present"], strict=True) if c)
        print(f"chips per label: {shares}; no label {main['unlabelled'] / main['chips']:.1%}")
        print(f"features: {main['kinds']}; {main['repaired']} invalid polygons repaired; "
              f"{main['problems']} problem messages")
        print(f"memory: peak RSS at {small_r['chips']:,} chips {small_rss:.0f} MB, at {main['chips']:,} chips "
              f"{main_rss:.0f} MB (x{main_rss / small_rss:.2f} for x{main['chips'] / small_r['chips']:.0f} chips)")
        one_cell = [s / one["cells"] * 1000 for s in one["seconds"]]
        print(f"per cell (1 process, steady state): read+json.loads {one_cell[0]:.0f} ms, osm_features "
              f"{one_cell[1]:.0f} ms, children(17) {one_cell[2]:.0f} ms, label_footprints {one_cell[3]:.0f} ms = "
              f"{sum(one_cell):.0f} ms = {one_rate:,.0f} chips/s; {args.processes} processes give "
              f"{main['chips'] / main_t / one_rate:.2f}x that")
        print(f"naive vs imagesim, 1 process, {len(sample)} sample cells: labelling step alone {naive_rate:,.0f} vs "
              f"{one['chips'] / one_label_s:,.0f} chips/s = imagesim {one['chips'] / one_label_s / naive_rate:.1f}x "
              f"faster; whole cells (read+parse+label; naive = its loop on {args.naive_chips} chips/cell "
              f"extrapolated to 1024) {4 ** (CHIP_ZOOM - 12) / naive_cell_s:,.0f} vs {one_rate:,.0f} chips/s = "
              f"{one_rate * naive_cell_s / 4 ** (CHIP_ZOOM - 12):.1f}x")
        print(f"agreement on the {naive['chips']} naive chips: same labels on {naive['agree']}; max |area share diff| "
              f"{naive['max_area_diff']:.2e}, max |length diff| {naive['max_length_diff']:.2e} m")
        for line in naive["disagreements"][:6]:
            print(f"  differs (imagesim/naive): {line}")
        other, available = main["other_cpu_s"], main["window_s"] * (os.cpu_count() or 1)
        print(f"machine: {os.cpu_count()} CPUs; during the {args.processes}-process run it used "
              f"{main['cpu_s']:.0f} CPU s of {available:.0f} available, other processes "
              + ("(unknown)" if other is None else f"{other:.0f} CPU s ({other / available:.0%})"))
        verdict = "within" if main_t <= AIM_S else "over"
        print(f"aim: {main['chips']:,} chips in {main_t:.0f} s on {args.processes} processes: {verdict} "
              f"the {AIM_S:.0f} s aim")


if __name__ == "__main__":
    main()
