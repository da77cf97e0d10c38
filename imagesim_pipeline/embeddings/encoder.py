"""Encode chips with the published ONNX model (onnxruntime): embedding and label probabilities.

The model file carries everything needed to use it (``export.read_metadata``): labels, per-label
thresholds, preprocessing and input size, so an encoder needs nothing but the file. The
execution provider is the best one installed (CUDA when there, else the CPU).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.export import INPUT, MAP_OUTPUTS, METADATA_KEY, session
from imagesim_pipeline.models.preprocess import CorruptImageError, Preprocessing, decode, to_input
from imagesim_pipeline.models.registry import DEFAULT_NAME, get_pointer, published_model_file
from imagesim_pipeline.storage import Bucket


class EncoderError(ImagesimError):
    """The ONNX model cannot be loaded or used; the message names it and says what to do."""


@dataclass
class Encoded:
    """Embeddings (N, D) and sigmoid probabilities (N, L) of the readable images; ``bad``: indices of the others.

    With ``with_maps``: ``maps``, the model's feature maps (name -> (N, C, h, w)), and ``rgb``, the
    images as the model saw them ((N, S, S, 3) uint8 at its input size), for change scoring.
    """

    embeddings: np.ndarray
    probs: np.ndarray
    bad: list[int]
    maps: dict[str, np.ndarray] | None = None
    rgb: np.ndarray | None = None


class OnnxEncoder:
    """A published SMLC as an onnxruntime session: bytes of images in, embeddings and probabilities out."""

    def __init__(self, path: str | Path, threads: int = 0, batch_size: int = 32) -> None:
        try:
            self.session = session(path, threads=threads or (os.cpu_count() or 1))
            meta = self.session.get_modelmeta().custom_metadata_map
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise EncoderError(f"{path} is not a loadable ONNX model: {exc}") from exc
        if METADATA_KEY not in meta:
            raise EncoderError(f"{path} has no imagesim metadata: not a model exported by imagesim")
        self.meta = json.loads(meta[METADATA_KEY])
        self.labels: list[str] = list(self.meta["labels"])
        self.thresholds: list[float] = [float(t) for t in self.meta["thresholds"]]
        p = self.meta["preprocessing"]
        self.prep = Preprocessing(size=int(p["size"]), mean=tuple(p["mean"]), std=tuple(p["std"]))
        self.name: str = self.meta.get("name", DEFAULT_NAME)
        self.version: str = self.meta["version"]
        self.batch_size = batch_size
        self.provider = self.session.get_providers()[0]
        names = {o.name for o in self.session.get_outputs()}
        self.map_outputs = [name for name in MAP_OUTPUTS if name in names]  # none in a model exported before them

    @property
    def has_maps(self) -> bool:
        """Whether the model outputs the feature maps change scoring compares."""
        return len(self.map_outputs) == len(MAP_OUTPUTS)

    @classmethod
    def from_bucket(cls, bucket: Bucket, name: str = DEFAULT_NAME, version: str = "", threads: int = 0,
                    batch_size: int = 32) -> OnnxEncoder:
        """A published version of a model (checked against its manifest), by default the newest (``latest.json``)."""
        version = version or get_pointer(bucket, name, "latest")
        with published_model_file(bucket, name, version) as path:
            return cls(path, threads, batch_size)  # the session holds the model: the file may go

    @property
    def dim(self) -> int:
        """The embedding dimension (the model's second output)."""
        return int(self.session.get_outputs()[1].shape[1])

    def encode(self, images: Sequence[bytes], with_maps: bool = False) -> Encoded:
        """Decode, preprocess and run ``images`` in batches; unreadable ones are left out and listed.

        ``with_maps``: also return the feature maps and the input images (they come from the same pass)."""
        if with_maps and not self.has_maps:
            raise EncoderError(f"model {self.version} has no feature-map outputs (exported before them)")
        tensors, good, bad = [], [], []
        for i, data in enumerate(images):
            try:
                tensors.append(to_input(decode(data), self.prep))
                good.append(i)
            except CorruptImageError:
                bad.append(i)
        embeddings = np.zeros((len(good), self.dim), np.float32)
        probs = np.zeros((len(good), len(self.labels)), np.float32)
        outputs = ["logits", "embedding", *(self.map_outputs if with_maps else [])]
        maps = {name: np.zeros((0, 1, 1, 1), np.float32) for name in outputs[2:]}
        size = self.prep.size
        rgb = np.zeros((len(good) if with_maps else 0, size, size, 3), np.uint8)
        scale = (np.asarray(self.prep.std, np.float32) * 255)[:, None, None]
        offset = (np.asarray(self.prep.mean, np.float32) * 255 + 0.5)[:, None, None]
        for start in range(0, len(good), self.batch_size):
            batch = torch.stack(tensors[start:start + self.batch_size]).numpy()
            logits, embedding, *feature_maps = self.session.run(outputs, {INPUT: batch})
            end = start + len(batch)
            embeddings[start:end] = embedding
            probs[start:end] = 1.0 / (1.0 + np.exp(-logits))
            for name, value in zip(outputs[2:], feature_maps):
                if start == 0:
                    maps[name] = np.empty((len(good), *value.shape[1:]), np.float32)
                maps[name][start:end] = value
            for j, x in enumerate(batch if with_maps else ()):  # the input back to pixels: what the maps saw
                rgb[start + j] = np.clip(x * scale + offset, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        if not with_maps:
            return Encoded(embeddings, probs, bad)
        return Encoded(embeddings, probs, bad, maps=maps, rgb=rgb)

    def predicted(self, probs: np.ndarray) -> np.ndarray:
        """0/1 labels: each probability at or above its label's stored threshold."""
        return probs >= np.asarray(self.thresholds, np.float32)


__all__ = ["Encoded", "EncoderError", "OnnxEncoder"]
