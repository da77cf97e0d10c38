"""Change maps as files: 8-bit grey PNGs in the bucket, colour heat overlays for people.

A map (:func:`imagesim_pipeline.changes.scorer.change_map`: 0 = unchanged, about 1 = unrelated
content) is stored at half the model's input size (112 x 112 for 224) as a one-channel PNG,
``round(255 * min(value, 1))``, in its cell's change file
(:mod:`imagesim_pipeline.changes.cell_changes`). :func:`heat_overlay` turns it into a
transparent-to-red RGBA image to lay over the after chip (the page's toggle, the Dagster sheet,
``imagesim changes --map``).
"""

from __future__ import annotations

import io

import numpy as np

from imagesim_pipeline.errors import ImagesimError

# Heat colours (RGBA) at map values 0, 0.2, 0.4, 0.6, 1: clear where nothing changed, then yellow to red.
_STOPS = np.array([0.0, 0.2, 0.4, 0.6, 1.0])
_COLOURS = np.array([[255, 255, 178, 0], [255, 255, 178, 0], [254, 204, 92, 150], [253, 141, 60, 200],
                     [227, 26, 28, 230]], dtype=np.float64)


STORED_DOWNSAMPLE = 2  # maps are stored at half the model's input size


class ChangeMapError(ImagesimError):
    """A stored change map that cannot be read; the message names it and what to run."""


def encode_map(change: np.ndarray, downsample: int = 1) -> bytes:
    """A (H, W) change map as an 8-bit grey PNG (values clipped to 0..1), ``downsample`` x smaller (block
    means; the pipeline stores maps at half the model's input size: they are smooth at that scale)."""
    from PIL import Image

    if change.ndim != 2:
        raise ValueError(f"a change map is 2-d, got shape {change.shape}")
    change = np.nan_to_num(change, nan=0.0)
    if downsample > 1:
        h, w = (n // downsample * downsample for n in change.shape)
        change = change[:h, :w].reshape(h // downsample, downsample, w // downsample, downsample).mean(axis=(1, 3))
    grey = np.round(np.clip(change, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_map(data: bytes, name: str = "change map") -> np.ndarray:
    """A stored map back as (H, W) float32 in 0..1; :class:`ChangeMapError` naming ``name`` when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode != "L":
                raise ChangeMapError(f"{name} is a {image.mode} image, not a one-channel change map")
            return np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ChangeMapError(f"{name} is not a readable PNG ({exc}): materialize chip_changes again") from None


def heat_overlay(change: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA heat colours of a 0..1 map: transparent below 0.2, yellow to red above."""
    v = np.clip(change, 0.0, 1.0).ravel()
    rgba = np.stack([np.interp(v, _STOPS, _COLOURS[:, c]) for c in range(4)], axis=-1)
    return np.round(rgba).astype(np.uint8).reshape(*change.shape, 4)


def overlay_png(change: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """The heat overlay as an RGBA PNG, resized to ``size`` (width, height) when given."""
    from PIL import Image

    image = Image.fromarray(heat_overlay(change), mode="RGBA")
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def composite(after: np.ndarray, change: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the after image with the heat overlay laid over it (the map resized to it)."""
    from PIL import Image

    base = Image.fromarray(after).convert("RGBA")
    heat = Image.fromarray(heat_overlay(change), mode="RGBA").resize(base.size, Image.Resampling.BILINEAR)
    return np.asarray(Image.alpha_composite(base, heat).convert("RGB"))


def triptych(before: np.ndarray, after: np.ndarray, change: np.ndarray, gap: int = 4) -> bytes:
    """A JPEG of before | after | after with the heat overlay, side by side (``imagesim changes --map``)."""
    from PIL import Image

    h, w = after.shape[:2]
    sheet = np.full((h, 3 * w + 2 * gap, 3), 255, np.uint8)
    for i, part in enumerate((before, after, composite(after, change))):
        sheet[:, i * (w + gap):i * (w + gap) + w] = part
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


__all__ = ["STORED_DOWNSAMPLE", "ChangeMapError", "composite", "decode_map", "encode_map", "heat_overlay",
           "overlay_png", "triptych"]
