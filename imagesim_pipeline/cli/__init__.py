"""The imagesim command: ingest imagery, discover deliveries, run the pipeline, inspect the grid.

One module per command group registers its subcommands (``register``); heavy imports (torch, lightning,
rasterio, dagster) happen inside the commands that need them. Exit codes: 0 success; 1 a run or check
that completed but failed (a failed Dagster run, a demo whose checks failed); 2 a usage error or an
error that names what to do (unknown chip or version, missing index, unreachable bucket or database).
"""

from __future__ import annotations

import argparse
import sys

from imagesim_pipeline.cli import data, demo, model, runs, search


def build_parser() -> argparse.ArgumentParser:
    """The ``imagesim`` argument parser with every command group's subcommands."""
    parser = argparse.ArgumentParser(prog="imagesim", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, runs, model, search, demo):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``imagesim`` command; its exit code (2 with one line on stderr for an error that says what to do)."""
    from imagesim_pipeline.cli.common import RunFailedError
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RunFailedError as exc:  # it ran, and failed: 1
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ImagesimError, StorageError) as exc:  # one line, never a traceback: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
