"""Benchmark: discovery of 10 000 ARD cells from a generated bucket listing.

Prints discovery throughput next to a floor measured in the same run: the cost of merely
iterating the same listing and splitting every key (what any discovery must at least do).
Usage: python benchmarks/bench_discovery.py [--cells 10000] [--acquisitions 2]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from datetime import datetime, timezone

from imagesim_pipeline.ard.discovery import discover
from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.storage import ObjectInfo

SUFFIXES = ["-visual.tif", "-pan.tif", "-data-mask.gpkg", "-cloud-mask.gpkg", ".json"]


def generated_listing(cells: int, acquisitions: int, seed: int = 1) -> list[ObjectInfo]:
    rng = random.Random(seed)
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    listing = []
    seen = set()
    while len(seen) < cells:
        zone = rng.randint(1, 60)
        x, y = rng.randint(1900, 2200), rng.randint(200, 3800)
        cell = ArdCell.from_tile(zone, x, y, 12)
        if cell.id in seen:
            continue
        seen.add(cell.id)
        for a in range(acquisitions):
            day = f"20{rng.randint(15, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            catalog = f"{rng.randrange(16**16):016X}"
            for suffix in SUFFIXES:
                key = f"ard/{cell.path}/{day}/{catalog}{suffix}"
                listing.append(ObjectInfo(key, rng.randint(1_000, 400_000_000), when))
        listing.append(ObjectInfo(f"ard/{cell.path}/osm_data.json", 1000, when))
    return listing


def floor(listing: list[ObjectInfo]) -> int:
    parts = 0
    for obj in listing:
        parts += len(obj.key.split("/"))
    return parts


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--acquisitions", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    listing = generated_listing(args.cells, args.acquisitions)
    result = discover(listing)
    assert len(result.cells) == args.cells and not result.problems
    t_floor = best_of(lambda: floor(listing), args.repeats)
    t_discover = best_of(lambda: discover(listing), args.repeats)
    tracemalloc.start()
    discover(listing)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"listing: {args.cells} cells, {len(listing)} objects")
    print(f"floor (iterate + split keys): {t_floor:.3f} s  ({len(listing) / t_floor:,.0f} objects/s)")
    print(f"discover:                     {t_discover:.3f} s  ({args.cells / t_discover:,.0f} cells/s, "
          f"{len(listing) / t_discover:,.0f} objects/s)")
    print(f"ratio discover/floor: {t_discover / t_floor:.1f}x   peak memory of discover: {peak / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
