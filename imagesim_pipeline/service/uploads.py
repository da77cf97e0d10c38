"""Checks on an uploaded query image before it reaches the model: size in bytes, format, pixel size, mode.

Only the header is decoded to check the pixel size (Pillow reads it lazily), so a small file that
claims a huge image (a decompression bomb: a 20000 x 20000 PNG is a few hundred KB) is refused
with a 413 before it is decompressed: by the pixel budget ``MAX_PIXELS``, and by Pillow's own
limit (``Image.MAX_IMAGE_PIXELS``), whose warning is an error here.

An animation (GIF, APNG, animated WebP) is used by its first frame, on purpose: that is the frame
``preprocess.decode`` gives the model. The API and ``imagesim search --image`` run the same checks.
"""

from __future__ import annotations

import io
import re
import warnings

from imagesim_pipeline.errors import ImagesimError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MIN_SIDE = 32  # pixels: smaller is no picture of a place
MAX_SIDE = 4096  # pixels: a chip is 256 px; larger uploads are photographs of a whole area
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # width x height, checked from the header before anything is decoded (413)
MODES = ("RGB", "RGBA", "L", "LA", "P")  # 8-bit images the encoder turns into RGB


class UploadError(ImagesimError):
    """An upload that cannot be used as a query; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ImageInfo(tuple):
    """``(width, height, format)`` of a checked image, and ``n_frames``: more than 1 for an animation, of
    which the first frame is the query."""

    n_frames: int

    def __new__(cls, width: int, height: int, fmt: str, n_frames: int = 1) -> ImageInfo:
        """The info tuple of an image ``width`` x ``height`` pixels in ``fmt`` with ``n_frames`` frames."""
        info = super().__new__(cls, (width, height, fmt))
        info.n_frames = n_frames
        return info

    @property
    def width(self) -> int:
        """Pixels across."""
        return self[0]

    @property
    def height(self) -> int:
        """Pixels down."""
        return self[1]

    @property
    def format(self) -> str:
        """The image format Pillow read (JPEG, PNG)."""
        return self[2]


def _too_many_pixels(name: str, width: int | None = None, height: int | None = None,
                     pixels: int | None = None) -> UploadError:
    size = f"{width}x{height} px" if width is not None else f"{pixels} pixels" if pixels else "too many pixels"
    return UploadError(413, f"{name} is {size}; the budget is {MAX_PIXELS} pixels ({MAX_SIDE}x{MAX_SIDE}): "
                            "send a smaller image (a chip is 256x256)")


def check_image(data: bytes, name: str = "upload") -> ImageInfo:
    """(width, height, format) of an acceptable query image, or :class:`UploadError`.

    The pixel size is read from the header: over ``MAX_PIXELS``, or over Pillow's decompression-bomb
    limit, is a 413 before any pixel is decoded. An animation (``n_frames`` > 1 on the result) is
    accepted: its first frame is decoded here and is what the model sees (``preprocess.decode``).
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(413, f"{name} is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes")
    if not data:
        raise UploadError(422, f"{name} is empty: send a JPEG or PNG image of a place")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's limit, not just a warning
            with Image.open(io.BytesIO(data)) as image:
                width, height, mode, fmt = image.width, image.height, image.mode, image.format or "?"
                if width * height > MAX_PIXELS:
                    raise _too_many_pixels(name, width, height)
                if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
                    raise UploadError(422, f"{name} is {width}x{height} px; a query image is {MIN_SIDE} to "
                                           f"{MAX_SIDE} px on each side (a chip is 256x256)")
                if mode not in MODES:
                    raise UploadError(422, f"{name} has pixel mode {mode}; send an 8-bit image "
                                           f"({', '.join(MODES)}), such as a chip JPEG")
                n_frames = getattr(image, "n_frames", 1)
                image.seek(0)  # an animation: its first frame, the one the model sees
                image.load()  # decode: a truncated or corrupt file fails here, not in the encoder
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # raised by Image.open from the header, before width and height are known: the message has the count
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_many_pixels(name, pixels=int(found.group(1)) if found else None) from None
    except UnidentifiedImageError:
        raise UploadError(415, f"{name} is not an image: send a JPEG or PNG (a chip from /api/chips/<id>/image)") \
            from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UploadError(422, f"{name} is not a readable image ({exc})") from None
    return ImageInfo(width, height, fmt, n_frames)


__all__ = ["ImageInfo", "MAX_PIXELS", "MAX_SIDE", "MAX_UPLOAD_BYTES", "MIN_SIDE", "MODES", "UploadError",
           "check_image"]
