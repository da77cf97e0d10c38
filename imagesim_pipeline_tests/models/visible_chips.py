"""Small chips whose labels you can see (bright, red, striped): the reference's inputs for model tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

LABELS = ["bright", "red", "striped"]


def chip_jpeg(rng: np.random.Generator, bright: bool, red: bool, striped: bool, size: int = 96) -> bytes:
    """A JPEG chip of ``size`` px showing its labels: brightness, a red cast, dark stripes."""
    image = rng.normal(150 if bright else 70, 12, (size, size, 3))
    if red:
        image[..., 0] += 60
    if striped:
        image[::8] = 20
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 1, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
