"""Benchmark: OSM extraction from a .osm.pbf for many cells in one pass vs one pass per cell.

Generates a synthetic extract (streets, buildings, multipolygon parks; real OSM structure,
made-up geometry) over a block of level-12 cells near Helsinki, then measures in the same run:

* one pass: ``extract_cells(pbf, all_cells)``;
* naive: ``extract_cells(pbf, [cell])`` for a sample of cells, one read of the file each.

Each variant runs in its own process so its peak RSS (libosmium included) is its own.
Usage: python benchmarks/bench_osm_pbf.py [--km 20] [--naive-sample 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _measure import measure
from shapely.geometry import box

from imagesim_pipeline.ard.grid import cells_covering
from imagesim_pipeline.demo.synthetic import generate_extract as generate
from imagesim_pipeline.osm.pbf import extract_cells


def _run(pbf: str, cell_ids: list[str], per_cell: bool) -> int:
    """Extract the cells (all in one pass, or one pass each); returns the elements written."""
    from imagesim_pipeline.ard.grid import ArdCell

    cells = [ArdCell.parse(c) for c in cell_ids]
    elements = 0
    for group in [[c] for c in cells] if per_cell else [cells]:
        for _, data in extract_cells(pbf, group):
            elements += len(data["nodes"]) + len(data["ways"]) + len(data["relations"])
    return elements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--km", type=float, default=20.0, help="side of the synthetic area in km")
    parser.add_argument("--naive-sample", type=int, default=6, help="cells measured the naive way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pbf = Path(tmp) / "synthetic.osm.pbf"
        started = time.perf_counter()
        counts = generate(pbf, args.km)
        cells = [c.id for c in cells_covering(box(*counts["bounds"]), 4326, 12)]
        print(f"extract: {counts['nodes']:,} nodes, {counts['ways']:,} ways, {counts['relations']} relations, "
              f"{pbf.stat().st_size / 1e6:.1f} MB, {len(cells)} level-12 cells "
              f"(generated in {time.perf_counter() - started:.1f} s)")
        t_one, elements, rss_one = measure(_run, str(pbf), cells, False)
        sample = cells[:: max(1, len(cells) // args.naive_sample)][: args.naive_sample]
        t_naive, _, rss_naive = measure(_run, str(pbf), sample, True)
        per_cell_naive = t_naive / len(sample)
        print(f"one pass, {len(cells)} cells:   {t_one:.1f} s = {len(cells) / t_one:.2f} cells/s, "
              f"{elements:,} elements out, peak RSS {rss_one:.0f} MB")
        print(f"naive, {len(sample)} sample cells: {t_naive:.1f} s = {1 / per_cell_naive:.2f} cells/s, "
              f"peak RSS {rss_naive:.0f} MB (all {len(cells)} cells would take ~{per_cell_naive * len(cells):.0f} s)")
        print(f"speed-up of one pass over naive: {per_cell_naive * len(cells) / t_one:.1f}x")


if __name__ == "__main__":
    main()
