"""``python -m imagesim_pipeline.chip``: the reference's chip.py, as ``imagesim chip``.

    chip.py --ard-path ARD/33 --zoom 17 --proc 4 --dest CHIPS/33
    chip.py --filename nodata-index.json --chip-dir CHIPS/33
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the reference ``chip.py`` options to ``parser``."""
    parser.add_argument("--ard-path", help="local ARD folder to chip (the ard/ folder or one zone's folder)")
    parser.add_argument("--dest", help="folder for the chips (with --ard-path)")
    parser.add_argument("--zoom", type=int, default=17, help="chip zoom 13..19 (default 17: 156.25 m)")
    parser.add_argument("--proc", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--size", type=int, help="resize chips to SIZE x SIZE px (default: native)")
    parser.add_argument("--write-empty", action="store_true", help="also write chips without valid pixels")
    parser.add_argument("--filename", help="with --chip-dir: write the nodata index of the chip folder here")
    parser.add_argument("--chip-dir", help="classify the chips in this folder from their pixels (read only)")


def run(args: argparse.Namespace) -> int:
    """Chip an ARD folder, or classify an existing chip folder; the exit status."""
    from imagesim_pipeline.chips.chipper import ChipError, check_zoom
    from imagesim_pipeline.chips.local import chip_ard_folder
    from imagesim_pipeline.chips.nodata_index import (
        class_histogram,
        classify_chip_folder,
    )

    if args.chip_dir:
        if not args.filename:
            print("error: --chip-dir needs --filename (where to write the index)", file=sys.stderr)
            return 2
        try:
            index, unreadable = classify_chip_folder(
                args.chip_dir, args.filename, progress=lambda i, n: print(f"classified {i}/{n} chips", flush=True))
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for message in unreadable:
            print(f"warning: skipped {message}", file=sys.stderr)
        print(f"{args.filename}: {len(index)} chips {class_histogram(index.values())}")
        return 0
    if not (args.ard_path and args.dest):
        print("error: give --ard-path and --dest to chip, or --chip-dir and --filename to classify",
              file=sys.stderr)
        return 2
    try:
        check_zoom(args.zoom)
        index, problems = chip_ard_folder(args.ard_path, args.dest, zoom=args.zoom, processes=args.proc,
                                          quality=args.quality, size=args.size, write_empty=args.write_empty,
                                          progress=lambda m: print(m, flush=True))
    except (ChipError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    target = Path(args.dest) / "nodata-index.json"
    target.write_text(json.dumps(index, sort_keys=True, indent=0))
    print(f"{args.dest}: {len(index)} chips {class_histogram(index.values())}; classes from the raster masks "
          f"in {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``chip.py`` command line; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m imagesim_pipeline.chip", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
