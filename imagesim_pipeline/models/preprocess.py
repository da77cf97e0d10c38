"""Chip pixels into model input: JPEG decode, resize, ImageNet normalisation; training augmentation.

Every consumer of the model (training, the feature cache, ONNX encoding of chips or of a user's
image) uses these functions, so train and serve see the same input. The ONNX model's metadata
records the same size, mean and std.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import simplejpeg
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from imagesim_pipeline.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from imagesim_pipeline.errors import ImagesimError


class CorruptImageError(ImagesimError, ValueError):
    """Bytes that are not a decodable image."""


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: RGB resized to ``size`` x ``size``, scaled to 0..1, then normalised."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)


def decode(data: bytes) -> torch.Tensor:
    """A JPEG (libjpeg-turbo) or any image Pillow reads, as a (3, H, W) uint8 tensor.

    Truncated or corrupt files raise :class:`CorruptImageError`.
    """
    if not data:
        raise CorruptImageError("empty file")
    try:
        if data[:2] == b"\xff\xd8":
            array = simplejpeg.decode_jpeg(data, colorspace="RGB")
        else:
            with Image.open(io.BytesIO(data)) as image:
                array = np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise CorruptImageError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def to_input(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """A (3, H, W) uint8 image as the normalised float (3, size, size) model input."""
    image = F.resize(image, [prep.size, prep.size], antialias=True)
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), list(prep.mean), list(prep.std))


def augment(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random one of the eight flips and 90° rotations (chips have no up from above)."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    image = torch.rot90(image, k, dims=(-2, -1))
    return torch.flip(image, dims=(-1,)) if flip % 2 else image


__all__ = ["CorruptImageError", "Preprocessing", "augment", "decode", "to_input"]
