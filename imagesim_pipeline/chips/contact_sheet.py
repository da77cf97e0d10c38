"""A contact sheet of sample chips (PNG), for asset metadata and docs."""

from __future__ import annotations

import io
import random
from collections.abc import Iterable

from PIL import Image, ImageDraw


def contact_sheet(chips: Iterable[tuple[str, bytes]], columns: int = 6, thumb: int = 128, seed: int = 0,
                  limit: int = 18) -> bytes:
    """A PNG grid of up to ``limit`` chips (name, JPEG bytes), sampled reproducibly."""
    items = list(chips)
    random.Random(seed).shuffle(items)
    items = sorted(items[:limit])
    rows = max(1, -(-len(items) // columns))
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, data) in enumerate(items):
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR)
        x, y = (i % columns) * thumb, (i // columns) * (thumb + 14)
        sheet.paste(image, (x, y))
        draw.text((x + 2, y + thumb + 1), name.split("_")[0][-8:], fill="black")
    out = io.BytesIO()
    sheet.save(out, format="PNG", optimize=True)
    return out.getvalue()
