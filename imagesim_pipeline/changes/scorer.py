"""Change between two co-registered images from frozen ImageNet feature maps (no training, no dagster).

The chip-embedding cosine of :mod:`imagesim_pipeline.changes.detect` compares two whole chips by
one vector each, so a new building on 5 % of a chip barely moves it. This scorer compares the
images *where* they differ, after deep change vector analysis (Saha et al. 2019: per-location
differences of pretrained CNN features) and the bitemporal matching of AnyChange (Zheng et al.
2024) and DynamicEarth (features compared by angle, matched in both directions):

1. **Features** (:class:`FeatureExtractor`): each image's channels are standardised by its own mean
   and standard deviation (ImageNet features are not invariant to brightness and contrast: a
   uniformly darkened copy scored like a real change), the input is upsampled ``upsample``-fold
   (buildings at 0.5-2 m are only a few pixels) and run through the frozen ImageNet
   EfficientNet-Lite0 up to ``blocks.4``; the outputs of ``blocks.2`` and ``blocks.4`` (strides 8
   and 16 of the upsampled input: 4 and 8 px of the original) are the feature maps. They are the
   blocks :data:`imagesim_pipeline.models.backbones.FEATURE_MAPS` names; an exported model must be
   fed the same input (per-image normalisation, 2x upsampling) for its maps to score alike.
2. **Feature distance** (:func:`feature_distance`), per block: each image's channel means are
   subtracted (a global shift of light, colour or season moves every location alike and is
   removed; uncentred ReLU features all point the same way, which hides change), then the cosine
   distance ``1 - cos`` of each location to its **best match within a (2r+1)^2 neighbourhood** of
   the other image (a displaced match costs ``match_penalty`` = 0.2 more, so where the images agree
   the same place wins), in both directions, and the **larger** of the two directional distances kept:
   a misregistered but unchanged place finds itself nearby in both directions (low), while a new
   object finds no match in the old image (high) even where the old ground finds ground next to it.
   (The smaller of the two, also tried, hid small new buildings.)
3. **Pixel cue** (:func:`pixel_distance`): each image's channels standardised to zero mean and unit
   variance (again: no global brightness, colour or season shift counts), the Euclidean colour
   distance to the best match within ``pixel_radius`` px in both directions (the larger kept),
   divided by its value for unrelated images (``2 * sqrt(3)``) and Gaussian-smoothed. It carries
   land-cover change at 2 m (DSIFN held-out window AUROC 0.52 without it, 0.66 with it) and costs
   building change at 0.5 m (LEVIR 0.81 -> 0.79; within single pairs 0.95 -> 0.84): for
   high-resolution building change, ``pixel_weight=0``.
4. **Map** (:func:`change_map`): the block distances, bilinearly resized to the input's size and
   averaged, plus ``pixel_weight`` times the pixel cue, divided by ``1 + pixel_weight``: 0 where
   the images agree, about 1 where the content is unrelated (values up to about 1.5 occur).
5. **Shadows** (:func:`shadow_mask`, :func:`damp_shadows`; off unless ``shadow_weight`` > 0): where
   either image is darker than ``shadow_level`` times its own median luminance, the map is
   multiplied by ``1 - shadow_weight``. Shadows move with the sun and lengthen in winter, so between
   a summer and an autumn acquisition every building casts a change; damping them lets a roof that
   became ground (sunlit in both) outrank the moved shadows. Off in the pair API: on real building
   construction (LEVIR) new shadows are part of the change, and damping them lowered the tuning
   split's window AUROC.
6. **Score** (:func:`aggregate`): the mean of the highest ``top_fraction`` (10 %) of the map's
   values, so a change covering 5 % of a chip makes half of the score instead of vanishing in the
   mean.

Steps 2-6 are plain numpy on ``(C, h, w)`` feature maps, so the maps can come from an ONNX model
instead of torch (importing this module loads no torch; only :class:`FeatureExtractor` does).

The defaults were chosen on a tuning split of real change pairs and measured on held-out pairs
(``benchmarks/bench_change_pairs.py``). What to expect: within one pair of acquisitions the
feature map ranks changed places well (LEVIR buildings), but raw scores are not comparable across
pairs of acquisitions (season, sensor and sun move every place's score), so compare a score with
others of the same pair of acquisitions (as :func:`imagesim_pipeline.changes.detect.robust_scores`
does), not with a fixed threshold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

SCORER_REVISION = 2  # raise when the arithmetic changes under the same parameters (2: shadow mask, 256-bin median)
UNRELATED_COLOUR_DISTANCE = 2 * np.sqrt(3)  # E|a - b| for independent standardised RGB pixels, about


@dataclass(frozen=True)
class ScorerParams:
    """How maps are compared and summarised; the defaults are the benchmark's tuned choice."""

    blocks: tuple[int, ...] = (2, 4)  # EfficientNet-Lite0 blocks whose outputs are compared
    upsample: float = 2.0  # input scale factor before the backbone
    normalise: str = "image"  # backbone input: "image" (each image's channel mean/std) or "imagenet"
    radius: int = 1  # feature matching neighbourhood, in feature cells: (2r+1)^2 candidates
    match_penalty: float = 0.2  # added to the distance of a displaced match: the same place is preferred
    pixel_weight: float = 0.25  # weight of the colour-normalised pixel cue (0: features only)
    pixel_cue: str = "match"  # "match" (best-matching pixel) or "envelope" (outside the local colour range)
    pixel_radius: int = 2  # pixel cue matching neighbourhood, in pixels
    pixel_sigma: float = 2.0  # Gaussian smoothing of the pixel cue, in pixels
    top_fraction: float = 0.1  # the score is the mean of this highest fraction of the map
    shadow_weight: float = 0.0  # how much the map is damped where either image is in shadow (0: off)
    shadow_level: float = 0.55  # in shadow: darker than this fraction of the image's median luminance

    def __post_init__(self) -> None:
        if not 0 <= self.shadow_weight <= 1:
            raise ValueError(f"shadow_weight must be within 0..1 (a map never turns negative), "
                             f"got {self.shadow_weight}")
        if self.shadow_level <= 0:
            raise ValueError(f"shadow_level must be positive, got {self.shadow_level}")

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of every parameter and of the scorer's revision: scores made otherwise are not comparable."""
        spec = {k: list(map(float, v)) if isinstance(v, tuple) else float(v) if isinstance(v, int | float)
                else v for k, v in asdict(self).items()}
        spec["revision"] = SCORER_REVISION
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


DEFAULT_PARAMS = ScorerParams()


class FeatureExtractor:
    """The frozen ImageNet EfficientNet-Lite0 trunk, loaded once: uint8 RGB images to feature maps.

    ``normalise="image"`` standardises each image's channels by its own mean and standard deviation
    instead of ImageNet's (a darker or bluer acquisition of the same place gives the same input);
    features of one image do not depend on the other, so they can be computed once per chip.
    ``weights``: a file, "random", or None for the offline default
    (:func:`imagesim_pipeline.models.backbones.default_weights`).
    """

    def __init__(self, blocks: Sequence[int] = DEFAULT_PARAMS.blocks, upsample: float = DEFAULT_PARAMS.upsample,
                 normalise: str = DEFAULT_PARAMS.normalise, weights: str | None = None):
        from imagesim_pipeline.models.backbones import build_backbone

        self.blocks = tuple(sorted(set(int(b) for b in blocks)))
        if not self.blocks or self.blocks[0] < 0 or self.blocks[-1] > 6:
            raise ValueError(f"blocks must be EfficientNet-Lite0 block indices 0..6, got {blocks}")
        self.upsample = float(upsample)
        if normalise not in ("image", "imagenet"):
            raise ValueError(f"normalise must be 'image' or 'imagenet', got {normalise!r}")
        self.normalise = normalise
        self.model = build_backbone("efficientnet_lite0", weights).eval()

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        """Feature maps of ``images`` ((H, W, 3) or (N, H, W, 3) uint8 RGB): one float32 array per
        block in ``self.blocks`` order, (C, h, w) for one image or (N, C, h, w) for a batch."""
        import torch
        import torch.nn.functional as F

        from imagesim_pipeline.models.backbones import IMAGENET_MEAN, IMAGENET_STD

        single = images.ndim == 3
        batch = images[None] if single else images
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected (H, W, 3) or (N, H, W, 3) RGB images, got shape {images.shape}")
        x = torch.from_numpy(batch.astype(np.float32)).permute(0, 3, 1, 2).div_(255)
        if self.normalise == "image":  # each image's own channel statistics: no global light/colour shift counts
            x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1 / 255)
        else:
            x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        if self.upsample != 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        out: dict[int, np.ndarray] = {}
        m: Any = self.model  # a timm EfficientNet: torch's Module type does not declare its stages
        with torch.inference_mode():
            x = m.bn1(m.conv_stem(x))
            for i, block in enumerate(m.blocks[: self.blocks[-1] + 1]):
                x = block(x)
                if i in self.blocks:
                    out[i] = x.numpy().astype(np.float32, copy=True)
        maps = [out[b] for b in self.blocks]
        return [f[0] for f in maps] if single else maps


def _unit_centred(f: np.ndarray) -> np.ndarray:
    """(C, h, w) features less their per-channel mean over the image, scaled to unit length per location."""
    f = f - f.mean(axis=(1, 2), keepdims=True)
    return f / np.maximum(np.linalg.norm(f, axis=0, keepdims=True), 1e-6)


def _best_match(ua: np.ndarray, ub: np.ndarray, radius: int, penalty: float) -> np.ndarray:
    """Per location of ``ua``: the smallest ``1 - cos`` to ``ub`` within ``radius`` cells (edges
    replicated), a displaced match costing ``penalty`` more."""
    best = 1.0 - np.einsum("chw,chw->hw", ua, ub)
    if radius <= 0:
        return best
    h, w = ub.shape[1:]
    padded = np.pad(ub, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            if dy == radius and dx == radius:
                continue
            d = 1.0 - np.einsum("chw,chw->hw", ua, padded[:, dy:dy + h, dx:dx + w]) + penalty
            np.minimum(best, d, out=best)
    return best


def feature_distance(before: np.ndarray, after: np.ndarray, radius: int = DEFAULT_PARAMS.radius,
                     penalty: float = DEFAULT_PARAMS.match_penalty) -> np.ndarray:
    """(h, w) change of two (C, h, w) feature maps of the same place: centred cosine distance to the
    best match within ``radius`` cells, the larger of before->after and after->before (0..2)."""
    if before.shape != after.shape or before.ndim != 3:
        raise ValueError(f"feature maps must be (C, h, w) of one shape, got {before.shape} and {after.shape}")
    ua, ub = _unit_centred(before.astype(np.float32)), _unit_centred(after.astype(np.float32))
    if radius <= 0:
        return _best_match(ua, ub, 0, 0.0)
    return np.maximum(_best_match(ua, ub, radius, penalty), _best_match(ub, ua, radius, penalty))


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 2-d array (4 sigma wide each side, edges mirrored: ``a b | b a``)."""
    if sigma <= 0:
        return x
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma, mode="reflect", truncate=4.0)


def pixel_distance(before: np.ndarray, after: np.ndarray, radius: int = DEFAULT_PARAMS.pixel_radius,
                   sigma: float = DEFAULT_PARAMS.pixel_sigma) -> np.ndarray:
    """(H, W) colour change of two (H, W, 3) images after per-image, per-channel standardisation:
    distance to the best match within ``radius`` px in both directions (the larger kept), over
    :data:`UNRELATED_COLOUR_DISTANCE`, Gaussian-smoothed (0 = same, about 1 = unrelated)."""
    def standardise(img: np.ndarray) -> np.ndarray:
        img = img.astype(np.float32)
        return (img - img.mean(axis=(0, 1))) / (img.std(axis=(0, 1)) + 1.0)

    a, b = standardise(before), standardise(after)

    def best(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        padded = np.pad(y, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
        out = np.full((h, w), np.inf, np.float32)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                np.minimum(out, ((x - padded[dy:dy + h, dx:dx + w]) ** 2).sum(-1), out=out)
        return out

    d = np.sqrt(np.maximum(best(a, b), best(b, a))) / UNRELATED_COLOUR_DISTANCE
    return _gaussian_blur(d, sigma)


def _sliding(x: np.ndarray, radius: int, op) -> np.ndarray:
    """``op`` (np.minimum or np.maximum) over a (2r+1)^2 window of a (C, H, W) array, edges replicated
    (separable: rows, then columns)."""
    _, h, w = x.shape
    p = np.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    rows = p[:, 0:h].copy()
    for k in range(1, 2 * radius + 1):
        op(rows, p[:, k:k + h], out=rows)
    p = np.pad(rows, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    out = p[:, :, 0:w].copy()
    for k in range(1, 2 * radius + 1):
        op(out, p[:, :, k:k + w], out=out)
    return out


def pixel_envelope_distance(before: np.ndarray, after: np.ndarray, radius: int = 2, sigma: float = 2.0) -> np.ndarray:
    """(H, W) colour change of two (H, W, 3) images, standardised per image and channel as in
    :func:`pixel_distance`: how far each pixel's colour lies outside the other image's per-channel
    range (min..max) within ``radius`` px, both directions (the larger kept), over
    :data:`UNRELATED_COLOUR_DISTANCE`, Gaussian-smoothed. Like :func:`pixel_distance` it forgives a
    shift of up to ``radius`` px, at a fraction of the cost (four separable min/max filters, run on the
    uint8 pixels: standardising is increasing per channel, so it commutes with min and max and is
    applied to their results, bit for bit what filtering the standardised floats gives)."""
    def channels(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # uint8 pixels are filtered as bytes; any other dtype as float32 (the same order, so the same result)
        raw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=None if img.dtype == np.uint8 else np.float32)
        f = raw.astype(np.float32)
        mean, scale = f.mean(axis=(1, 2), keepdims=True), f.std(axis=(1, 2), keepdims=True) + 1.0
        return raw, (f - mean) / scale, mean, scale

    def outside(x: np.ndarray, y: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        raw, _, mean, scale = y
        below = np.maximum((_sliding(raw, radius, np.minimum).astype(np.float32) - mean) / scale - x, 0)
        above = np.maximum(x - (_sliding(raw, radius, np.maximum).astype(np.float32) - mean) / scale, 0)
        return (below * below + above * above).sum(0)

    a, b = channels(before), channels(after)
    d = np.sqrt(np.maximum(outside(a[1], b), outside(b[1], a))) / UNRELATED_COLOUR_DISTANCE
    return _gaussian_blur(d, sigma)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luminance of RGB
SHADOW_RAMP = 0.1  # the shadow mask goes from 1 to 0 over this band of relative luminance around the level


def shadow_mask(before: np.ndarray, after: np.ndarray, level: float = DEFAULT_PARAMS.shadow_level) -> np.ndarray:
    """(H, W) float32 in 0..1: where either (H, W, 3) image is in shadow, i.e. darker than ``level`` times
    its own median luminance (a soft step :data:`SHADOW_RAMP` wide, smoothed by one pixel).

    Shadows move with the sun between acquisitions and lengthen in winter, so every building casts a
    change; a relative level follows each image's exposure and haze. Damping the map there keeps what
    changed in sunlit pixels (a roof replaced by ground) ahead of shadows that only moved.
    """
    def dark(img: np.ndarray) -> np.ndarray:
        luma = img.astype(np.float32) @ LUMA
        levels = np.cumsum(np.bincount((luma + 0.5).astype(np.uint8).ravel(), minlength=256))
        median = int(np.searchsorted(levels, (luma.size + 1) / 2))  # of the luminance rounded to 0..255: O(n)
        relative = luma / max(median, 1)
        return _gaussian_blur(np.clip((level + SHADOW_RAMP / 2 - relative) / SHADOW_RAMP, 0, 1), 1.0)

    return np.maximum(dark(before), dark(after)).astype(np.float32)


def resize_bilinear(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2-d map bilinearly resized to (height, width), pixel centres aligned (``align_corners=False``)."""
    h, w = m.shape

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(s).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (s - lo).astype(np.float32)

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def change_map(features_before: Sequence[np.ndarray], features_after: Sequence[np.ndarray],
               before: np.ndarray, after: np.ndarray, params: ScorerParams = DEFAULT_PARAMS) -> np.ndarray:
    """(H, W) float32 change map at the images' resolution from their (C, h, w) feature maps (any
    source: torch, ONNX) and the (H, W, 3) images: 0 = no change, about 1 = unrelated content."""
    if before.shape != after.shape or before.ndim != 3:
        raise ValueError(f"images must be (H, W, 3) of one shape, got {before.shape} and {after.shape}")
    if len(features_before) != len(features_after) or not features_before:
        raise ValueError("need the same, non-zero number of feature maps for both images")
    height, width = before.shape[:2]
    feat = np.asarray(sum(resize_bilinear(feature_distance(fa, fb, params.radius, params.match_penalty), height, width)
                          for fa, fb in zip(features_before, features_after))) / len(features_before)
    if params.pixel_weight > 0:
        cue = pixel_envelope_distance if params.pixel_cue == "envelope" else pixel_distance
        feat = feat + params.pixel_weight * cue(before, after, params.pixel_radius, params.pixel_sigma)
    return damp_shadows((feat / (1 + params.pixel_weight)).astype(np.float32), before, after, params)


def damp_shadows(change: np.ndarray, before: np.ndarray, after: np.ndarray, params: ScorerParams) -> np.ndarray:
    """``change`` times ``1 - shadow_weight * shadow_mask`` (unchanged when ``params.shadow_weight`` is 0)."""
    if params.shadow_weight <= 0:
        return change
    return (change * (1 - params.shadow_weight * shadow_mask(before, after, params.shadow_level))).astype(np.float32)


def aggregate(change: np.ndarray, top_fraction: float = DEFAULT_PARAMS.top_fraction) -> float:
    """One score for a map (or a window of it): the mean of its highest ``top_fraction`` of values."""
    values = np.asarray(change, dtype=np.float32).ravel()
    if values.size == 0:
        raise ValueError("cannot score an empty map")
    k = min(values.size, max(1, int(round(values.size * top_fraction))))
    return float(np.partition(values, values.size - k)[values.size - k:].mean())


def _check_image(name: str, img: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB array, got {img.dtype} {img.shape}")


def score_pair(before: np.ndarray, after: np.ndarray, extractor: FeatureExtractor | None = None,
               params: ScorerParams = DEFAULT_PARAMS) -> tuple[float, np.ndarray]:
    """Change between two co-registered (H, W, 3) uint8 RGB images of one place.

    Returns ``(score, map)``: the chip score (:func:`aggregate` of the map) and the (H, W) float32
    change map (:func:`change_map`: 0 = unchanged, about 1 = unrelated content). Pass an
    ``extractor`` to reuse a loaded model across pairs (its blocks, upsampling and normalisation
    are the ones used); without one, a :class:`FeatureExtractor` for ``params`` is built for this call.
    """
    _check_image("before", before)
    _check_image("after", after)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ in size: co-register them first")
    extractor = extractor or FeatureExtractor(params.blocks, params.upsample, params.normalise)
    maps = extractor(np.stack([before, after]))
    change = change_map([f[0] for f in maps], [f[1] for f in maps], before, after, params)
    return aggregate(change, params.top_fraction), change


__all__ = ["DEFAULT_PARAMS", "FeatureExtractor", "ScorerParams", "aggregate", "change_map", "damp_shadows",
           "feature_distance",
           "pixel_distance", "pixel_envelope_distance", "resize_bilinear", "score_pair", "shadow_mask"]
