"""The published model's spatial feature maps, for change scoring: only ``model.onnx`` is needed.

``model.onnx`` carries the backbone's intermediate feature maps as outputs ``features_8`` and
``features_16`` (strides 8 and 16) beside ``logits`` and ``embedding``. :class:`OnnxFeatureMaps`
cuts the graph to those outputs (``onnx.utils.Extractor``), so scoring a pair runs only the first
blocks of the backbone, not its last stages and the head. A model exported before the maps existed
has no such outputs: :meth:`OnnxFeatureMaps.from_bucket` then answers None, so change scoring can
fall back to the embedding distance.

:class:`imagesim_pipeline.changes.spatial.ChipPairScorer` feeds it chips standardised by their own
channel statistics (``normalise="image"``), as the pixel-pair scorer's torch extractor does.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.export import INPUT, MAP_OUTPUTS, METADATA_KEY, session
from imagesim_pipeline.storage import Bucket


class FeatureMapsError(ImagesimError):
    """The model's feature maps cannot be computed; the message names the model and what to do."""


class NoFeatureMapsError(FeatureMapsError):
    """A model exported before the feature maps were part of it."""


class OnnxFeatureMaps:
    """Images (uint8 RGB, any size) in, the model's feature maps out, through the cut ONNX graph."""

    def __init__(self, path: str | Path, threads: int = 0, outputs: Sequence[str] = MAP_OUTPUTS) -> None:
        import onnx
        from onnx.utils import Extractor

        model = onnx.load(str(path))
        meta = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in meta:
            raise FeatureMapsError(f"{path} has no imagesim metadata: not a model exported by imagesim")
        self.meta = json.loads(meta[METADATA_KEY])
        names = {o.name for o in model.graph.output}
        missing = [o for o in outputs if o not in names]
        if missing:
            raise NoFeatureMapsError(f"{path} has no {', '.join(missing)} output: exported before feature maps were "
                                   "part of the model; train and publish a new version (trainer_job)")
        cut = Extractor(model).extract_model([INPUT], list(outputs))
        with tempfile.TemporaryDirectory(prefix="imagesim-maps-") as tmp:
            onnx.save(cut, os.path.join(tmp, "maps.onnx"))
            self.session = session(os.path.join(tmp, "maps.onnx"), threads=threads or (os.cpu_count() or 1))
        self.outputs = list(outputs)
        self.size = int(self.meta["input_size"])
        prep = self.meta["preprocessing"]
        self.mean = np.asarray(prep["mean"], np.float32)[:, None, None]
        self.std = np.asarray(prep["std"], np.float32)[:, None, None]
        self.version: str = self.meta["version"]

    @classmethod
    def from_bucket(cls, bucket: Bucket, name: str, version: str, threads: int = 0) -> OnnxFeatureMaps | None:
        """The maps of a published version; None when its model has no feature-map outputs (an older export)."""
        from imagesim_pipeline.models.registry import published_model_file

        with published_model_file(bucket, name, version) as path:
            try:
                return cls(path, threads)
            except NoFeatureMapsError:
                return None

    def preprocess(self, images: Sequence[np.ndarray], normalise: str = "model") -> np.ndarray:
        """(N, 3, S, S) float32 model input from uint8 (H, W, 3) images: resized, scaled to 0..1, then
        standardised by the model's mean and std (``"model"``) or by each image's own channel mean and
        standard deviation (``"image"``: a darker or hazier acquisition of a place gives the same input)."""
        from PIL import Image

        if normalise not in ("model", "image"):
            raise ValueError(f"normalise must be 'model' or 'image', got {normalise!r}")
        batch = np.empty((len(images), 3, self.size, self.size), np.float32)
        for i, image in enumerate(images):
            if image.shape[:2] != (self.size, self.size):
                image = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.Resampling.BILINEAR))
            x = image.transpose(2, 0, 1).astype(np.float32) / 255.0
            if normalise == "image":  # as the pixel-pair scorer's FeatureExtractor does
                batch[i] = (x - x.mean(axis=(1, 2), keepdims=True)) / (x.std(axis=(1, 2), keepdims=True) + 1 / 255)
            else:
                batch[i] = (x - self.mean) / self.std
        return batch

    def __call__(self, images: Sequence[np.ndarray], normalise: str = "model") -> dict[str, np.ndarray]:
        """Each output's maps, (N, C, h, w) float32."""
        if not len(images):
            return {name: np.zeros((0, 1, 1, 1), np.float32) for name in self.outputs}
        got = self.session.run(self.outputs, {INPUT: self.preprocess(images, normalise)})
        return dict(zip(self.outputs, got))


__all__ = ["FeatureMapsError", "NoFeatureMapsError", "OnnxFeatureMaps"]
