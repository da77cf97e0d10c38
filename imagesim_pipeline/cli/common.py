"""What every command group shares: output, argument parsers, the model options, process helpers."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

BUCKET_HELP = "bucket root: a folder or s3://bucket/prefix (default: $IMAGESIM_BUCKET or data/bucket)"


def _print(msg: str) -> None:
    print(msg, flush=True)


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YYYY-MM-DD date") from None


def _parse_zone(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UTM zone number 1-60")
    return int(text)


def _parse_k(text: str) -> int:
    """``--k``: checked while parsing (one line, exit 2), before the search engine is imported."""
    from imagesim_pipeline.search.bbox import MAX_K

    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= k <= MAX_K:
        raise argparse.ArgumentTypeError(f"k must be between 1 and {MAX_K}; got {k}")
    return k


def _parse_bounds(text: str) -> tuple[float, float, float, float]:
    """WEST,SOUTH,EAST,NORTH in degrees, range-checked (``search.bbox.parse_bbox``, as the API's bbox)."""
    from imagesim_pipeline.search.bbox import BboxError, parse_bbox

    try:
        return parse_bbox(text)
    except BboxError as exc:  # argparse prints it as one line and exits 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse_setting(text: str) -> tuple[str, object]:
    import yaml

    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({exc})") from None


# --- commands -------------------------------------------------------------------------------


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be listened on; if not, say so in one line (the caller exits 2)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port} ({exc.strerror}): another server holds it; stop it or "
              "choose another --port", file=sys.stderr)
        return False
    return True


def _exec_dagster(command: str, *args: str) -> None:
    """Replace this process with Dagster's ``command`` over the project's workspace, once the instance opens
    (its storage checked: an unreachable PostgreSQL is one line) and imagesim's pools are set."""
    import os
    import shutil

    from imagesim_pipeline.orchestration.instance import open_instance
    from imagesim_pipeline.settings import PROJECT_ROOT

    open_instance().dispose()
    program = shutil.which(command, path=str(Path(sys.executable).parent)) or command
    os.chdir(PROJECT_ROOT)
    os.execv(program, [program, *args, "-w", "workspace.yaml"])


def _model_options(p: argparse.ArgumentParser, bucket_help: str) -> None:
    """--name, --version and --bucket of the commands that read a published model's outputs."""
    p.add_argument("--name", default="smlc", help="model name (default smlc)")
    p.add_argument("--version", help="model version (default: the one search serves, models/<name>/serving.json)")
    p.add_argument("--bucket", help=bucket_help)
