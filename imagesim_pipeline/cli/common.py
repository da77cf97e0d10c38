"""What every command group shares: output, argument parsers, the model options, process helpers."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from imagesim_pipeline.errors import ImagesimError

BUCKET_HELP = "bucket root: a folder or s3://bucket/prefix (default: $IMAGESIM_BUCKET or data/bucket)"


class CommandError(ImagesimError):
    """A command that cannot go on; the message says what to do (``main`` prints it, exit 2)."""


class RunFailedError(ImagesimError):
    """A run or check that completed but failed; the message says which (``main`` prints it, exit 1)."""


def say(msg: str) -> None:
    """A line of progress or result on stdout, flushed at once (output interleaves with Dagster's logs)."""
    print(msg, flush=True)


def parse_date(text: str) -> date:
    """``--since``/``--until``: a YYYY-MM-DD date."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YYYY-MM-DD date") from None


def parse_zone(text: str) -> int:
    """``--zone``: a UTM zone number 1-60."""
    if not text.isdigit() or not 1 <= int(text) <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UTM zone number 1-60")
    return int(text)


def parse_k(text: str) -> int:
    """``--k``: checked while parsing (one line, exit 2), before the search engine is imported."""
    from imagesim_pipeline.search.bbox import MAX_K

    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= k <= MAX_K:
        raise argparse.ArgumentTypeError(f"k must be between 1 and {MAX_K}; got {k}")
    return k


def parse_bounds(text: str) -> tuple[float, float, float, float]:
    """WEST,SOUTH,EAST,NORTH in degrees, range-checked (``search.bbox.parse_bbox``, as the API's bbox)."""
    from imagesim_pipeline.search.bbox import BboxError, parse_bbox

    try:
        return parse_bbox(text)
    except BboxError as exc:  # argparse prints it as one line and exits 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_setting(text: str) -> tuple[str, object]:
    """``--set KEY=VALUE``: the value read as YAML (numbers, booleans, lists)."""
    import yaml

    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({exc})") from None


# --- commands -------------------------------------------------------------------------------


def require_free_port(host: str, port: int) -> None:
    """Refuse (:class:`CommandError`, exit 2) when ``host:port`` cannot be listened on."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port} ({exc.strerror}): another server holds it; stop it or "
                           "choose another --port") from None


def exec_dagster(command: str, *args: str) -> None:
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


def model_options(p: argparse.ArgumentParser, bucket_help: str) -> None:
    """--name, --version and --bucket of the commands that read a published model's outputs."""
    p.add_argument("--name", default="smlc", help="model name (default smlc)")
    p.add_argument("--version", help="model version (default: the one search serves, models/<name>/serving.json)")
    p.add_argument("--bucket", help=bucket_help)
