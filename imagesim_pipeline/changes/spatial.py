"""Chip pairs scored by where they differ, with the published model's own feature maps.

The bridge between the pipeline and :mod:`imagesim_pipeline.changes.scorer`: the feature maps of
both chips are ``model.onnx``'s ``features_8`` and ``features_16`` outputs (the frozen ImageNet
backbone's ``blocks.2`` and ``blocks.4``), computed on the model's own input (its size, ImageNet
normalisation), so an encoder machine needs nothing but that file, and the encoder gets them from
the same pass that makes the embeddings (:func:`imagesim_pipeline.embeddings.cell_embeddings.embed_cell`).
:func:`pair_change` turns two chips' maps and input pixels into the score and the change map (at
the model's input size); :class:`ChipPairScorer` does the whole thing from chip bytes, for pairs the
encoder did not score (cells encoded before, or by a run that stopped between its two writes).

:data:`CHIP_PARAMS` were chosen on demo worlds rendered with other seeds (``imagesim demo build
--seed 11`` and ``--seed 13``, their pairs pooled; ``benchmarks/bench_changes.py --tune`` says how),
not on the figures README reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imagesim_pipeline.changes.feature_maps import OnnxFeatureMaps
from imagesim_pipeline.changes.scorer import ScorerParams, aggregate, change_map
from imagesim_pipeline.errors import ImagesimError

# The pipeline's choice: both feature maps, the cheap envelope pixel cue at half the features' weight,
# shadows (darker than 0.55 x the chip's median luminance in either date) damped by half, the mean of
# the map's most changed twentieth.
CHIP_PARAMS = ScorerParams(blocks=(2, 4), upsample=1.0, normalise="imagenet", radius=1, match_penalty=0.2,
                           pixel_weight=0.5, pixel_cue="envelope", pixel_radius=2, pixel_sigma=2.0, top_fraction=0.05,
                           shadow_weight=0.5, shadow_level=0.55)
OUTPUT_OF_BLOCK = {2: "features_8", 4: "features_16"}  # the exported maps (models.backbones.FEATURE_MAPS)


class UnreadablePairError(ImagesimError):
    """One of a pair's chips cannot be decoded."""


@dataclass
class PairChange:
    """One pair's chip score and change map (at the model's input size: 0 = unchanged, about 1 = unrelated)."""

    score: float
    change: np.ndarray


def decode_rgb(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a chip JPEG (or any image Pillow reads); :class:`UnreadablePairError` if not."""
    from imagesim_pipeline.models.preprocess import CorruptImageError, decode

    try:
        return decode(data).permute(1, 2, 0).numpy()
    except CorruptImageError as exc:
        raise UnreadablePairError(str(exc)) from None


def pair_change(before_maps: Mapping[str, np.ndarray], after_maps: Mapping[str, np.ndarray], before_rgb: np.ndarray,
                after_rgb: np.ndarray, params: ScorerParams = CHIP_PARAMS) -> PairChange:
    """Score and map of one pair from each chip's feature maps (output name -> (C, h, w)) and its pixels as
    the model saw them ((S, S, 3) uint8)."""
    outputs = [OUTPUT_OF_BLOCK[block] for block in params.blocks]
    change = change_map([before_maps[o] for o in outputs], [after_maps[o] for o in outputs], before_rgb, after_rgb,
                        params)
    return PairChange(aggregate(change, params.top_fraction), change)


class ChipPairScorer:
    """Scores pairs of co-registered chips from their bytes with a published model's feature maps."""

    def __init__(self, maps: OnnxFeatureMaps, params: ScorerParams = CHIP_PARAMS, batch_pairs: int = 16) -> None:
        if params.upsample != 1.0 or params.normalise != "imagenet":
            raise ValueError("chips are scored on the model's own input: upsample 1 and normalise 'imagenet'")
        unknown = set(params.blocks) - set(OUTPUT_OF_BLOCK)
        if unknown:
            raise ValueError(f"the exported feature maps are blocks 2 and 4, not {sorted(unknown)}")
        self.maps, self.params, self.batch_pairs = maps, params, batch_pairs
        self.version = maps.version

    def score_images(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[PairChange]:
        """Each (before, after) pair of (H, W, 3) uint8 images scored."""
        out: list[PairChange] = []
        for start in range(0, len(pairs), self.batch_pairs):
            part = pairs[start:start + self.batch_pairs]
            images = [self._at_input(image) for pair in part for image in pair]
            features = self.maps(images)
            for i in range(len(part)):
                maps = [{name: value[2 * i + k] for name, value in features.items()} for k in (0, 1)]
                out.append(pair_change(maps[0], maps[1], images[2 * i], images[2 * i + 1], self.params))
        return out

    def _at_input(self, image: np.ndarray) -> np.ndarray:
        """An image at the model's input size, as the encoder resizes it (the pixel cue compares these)."""
        from imagesim_pipeline.models.preprocess import Preprocessing, to_input

        size = self.maps.size
        if image.shape[:2] == (size, size):
            return image
        import torch

        prep = Preprocessing(size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        x = to_input(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), prep)
        return np.clip(x.numpy().transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)


__all__ = ["CHIP_PARAMS", "ChipPairScorer", "OUTPUT_OF_BLOCK", "PairChange", "UnreadablePairError", "decode_rgb",
           "pair_change"]
