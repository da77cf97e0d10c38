"""Dagster metadata people read in the UI: Markdown tables and inline pictures, shared by the asset modules."""

from __future__ import annotations

import base64


def counts_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def image_markdown(png: bytes, title: str) -> str:
    """A PNG inline in Markdown (a data URI): the asset's page shows it without a file server."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
