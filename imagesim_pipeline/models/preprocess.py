"""Chip pixels into model input: JPEG decode, resize, ImageNet normalisation; training augmentation.

Every consumer of the model (training, the feature cache, ONNX encoding of chips or of a user's
image) uses these functions, so train and serve see the same input. The ONNX model's metadata
records the same size, mean and std.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import simplejpeg
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageOps

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.backbones import IMAGENET_MEAN, IMAGENET_STD


class CorruptImageError(ImagesimError, ValueError):
    """Bytes that are not a decodable image."""


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: RGB resized to ``size`` x ``size``, scaled to 0..1, then normalised."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (metrics.json, model.onnx's metadata, the feature cache's key)."""
        return asdict(self)


ORIENTATION = 0x0112  # the EXIF tag; 1 is upright


def _jpeg_has_exif(data: bytes) -> bool:
    """Whether a JPEG has an EXIF (APP1) segment before its image data: cheap, chips have none."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no more headers
            return False
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            return True
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def decode(data: bytes) -> torch.Tensor:
    """A JPEG (libjpeg-turbo) or any image Pillow reads, as a (3, H, W) uint8 tensor, upright.

    An EXIF orientation other than 1 (a photograph taken on its side) is applied, as viewers do
    (``ImageOps.exif_transpose``); JPEGs without one (every chip) take the fast simplejpeg path. Of
    an animation (GIF, APNG, WebP) the first frame is the image, on purpose. Truncated or corrupt
    files, and images over Pillow's decompression-bomb limit, raise :class:`CorruptImageError`.
    """
    if not data:
        raise CorruptImageError("empty file")
    try:
        if data[:2] == b"\xff\xd8" and not (_jpeg_has_exif(data) and _orientation(data) != 1):
            array = simplejpeg.decode_jpeg(data, colorspace="RGB")
        else:
            with Image.open(io.BytesIO(data)) as image:
                image.seek(0)  # an animation: its first frame
                upright: Image.Image = image
                if image.getexif().get(ORIENTATION, 1) != 1:
                    upright = ImageOps.exif_transpose(image)
                array = np.array(upright.convert("RGB"))  # writable: torch.from_numpy warns on read-only
    except (ValueError, OSError, EOFError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _orientation(data: bytes) -> int:
    """The EXIF orientation of an image (1 when it has none), from its header."""
    with Image.open(io.BytesIO(data)) as image:
        return image.getexif().get(ORIENTATION, 1)


def to_input(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """A (3, H, W) uint8 image as the normalised float (3, size, size) model input."""
    image = F.resize(image, [prep.size, prep.size], antialias=True)
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), list(prep.mean), list(prep.std))


def augment(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random one of the eight flips and 90° rotations (chips have no up from above)."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    image = torch.rot90(image, k, dims=(-2, -1))
    return torch.flip(image, dims=(-1,)) if flip % 2 else image


__all__ = ["CorruptImageError", "ORIENTATION", "Preprocessing", "augment", "decode", "to_input"]
