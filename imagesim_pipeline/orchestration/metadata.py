"""Dagster metadata people read in the UI: rounded numbers, Markdown tables and plots, shared by the asset modules.

How the Dagster 1.13 UI shows metadata (``dagster_webserver``'s asset page): numbers and text inline, as
given (a float shows every digit: round it with :func:`significant` or :func:`rounded`); Markdown of
fewer than ``INLINE_MARKDOWN`` characters inline, rendered; longer Markdown, and so every picture (a PNG
as a data URI is kilobytes), behind a "[Show Markdown]" link that opens it in a dialog. Dagster has no
picture metadata type, and a link to the PNG in the bucket opens nothing in a browser (``s3://``,
``file://``), so a plot is a Markdown image of its own entry (:func:`plot`), beside a short table of the
figures it shows, which the page renders inline.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from dagster import MetadataValue

INLINE_MARKDOWN = 1000  # the UI renders shorter Markdown in place, longer behind "[Show Markdown]"


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (0.2086, 12.35), never dropping whole digits (1235.0)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def rounded(value: Any, digits: int = 4) -> Any:
    """``value`` with every float in it (in dicts, lists and tuples too) rounded by :func:`significant`."""
    if isinstance(value, MetadataValue):  # Dagster's values are tuples underneath: never taken apart
        return value
    if isinstance(value, float):
        return significant(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    if isinstance(value, tuple):
        return tuple(rounded(v, digits) for v in value)
    return value


def counts_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    """A Markdown table; floats in ``rows`` rounded by :func:`significant`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(rounded(v)) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def image_markdown(png: bytes, title: str) -> str:
    """A PNG inline in Markdown (a data URI): the asset's page shows it without a file server."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def plot(png: bytes, title: str) -> MetadataValue:
    """A PNG plot as a metadata entry: the UI's "[Show Markdown]" link opens the picture."""
    return MetadataValue.md(image_markdown(png, title))
