"""Checks on an uploaded query image before it reaches the model: size in bytes, format, pixel size, mode.

Only the header is decoded to check the pixel size (Pillow reads it lazily), so a small file that
claims a huge image is refused before it is decompressed.
"""

from __future__ import annotations

import io
from imagesim_pipeline.errors import ImagesimError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MIN_SIDE = 32  # pixels: smaller is no picture of a place
MAX_SIDE = 4096  # pixels: a chip is 256 px; larger uploads are photographs of a whole area
MODES = ("RGB", "RGBA", "L", "LA", "P")  # 8-bit images the encoder turns into RGB


class UploadError(ImagesimError):
    """An upload that cannot be used as a query; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_image(data: bytes, name: str = "upload") -> tuple[int, int, str]:
    """(width, height, format) of an acceptable query image, or :class:`UploadError`."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(413, f"{name} is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes")
    if not data:
        raise UploadError(422, f"{name} is empty: send a JPEG or PNG image of a place")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, mode, fmt = image.width, image.height, image.mode, image.format or "?"
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
                raise UploadError(422, f"{name} is {width}x{height} px; a query image is {MIN_SIDE} to {MAX_SIDE} px "
                                       "on each side (a chip is 256x256)")
            if mode not in MODES:
                raise UploadError(422, f"{name} has pixel mode {mode}; send an 8-bit image "
                                       f"({', '.join(MODES)}), such as a chip JPEG")
            image.load()  # decode: a truncated or corrupt file fails here, not in the encoder
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(415, f"{name} is not an image: send a JPEG or PNG (a chip from /api/chips/<id>/image)") \
            from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UploadError(422, f"{name} is not a readable image ({exc})") from None
    return width, height, fmt


__all__ = ["MAX_SIDE", "MAX_UPLOAD_BYTES", "MIN_SIDE", "MODES", "UploadError", "check_image"]
