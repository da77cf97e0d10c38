"""ONNX export of the SMLC: one graph, dynamic batch, outputs ``logits`` and ``embedding`` and the backbone's
feature maps ``features_8`` and ``features_16`` (strides 8 and 16: what change scoring compares).

The graph takes normalised images (``input``: float32, N x 3 x size x size); the model's
metadata (``imagesim`` JSON in the ONNX metadata) says how to make them: size, mean and std, and
also the labels, their thresholds, the backbone and the dataset version. The export is checked
against torch with onnxruntime on real inputs and the maximum absolute difference is recorded.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from imagesim_pipeline.errors import ImagesimError

if TYPE_CHECKING:
    from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier

INPUT, OUTPUTS = "input", ("logits", "embedding")
MAP_OUTPUTS = ("features_8", "features_16")  # spatial features: encoders that only search never fetch them
METADATA_KEY = "imagesim"


class ExportError(ImagesimError):
    """The ONNX export failed or does not match the torch model."""


class _Exportable(nn.Module):
    def __init__(self, model: SkywayMultiLabelClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from imagesim_pipeline.models.backbones import forward_with_maps

        settings = self.model.settings
        vector, maps = forward_with_maps(self.model.backbone, settings.backbone, images, settings.pooling)
        logits, embedding = self.model.head_outputs(vector)
        return (logits, self.model.search_embedding(logits, embedding), *(maps[name] for name in MAP_OUTPUTS))


class _PooledBackbone(nn.Module):
    def __init__(self, backbone: nn.Module, name: str, pooling: str) -> None:
        super().__init__()
        self.backbone, self.name, self.pooling = backbone, name, pooling

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from imagesim_pipeline.models.backbones import forward_with_maps

        return forward_with_maps(self.backbone, self.name, images, self.pooling)[0]


def _export(module: nn.Module, path: Path, input_size: int, outputs: list[str], opset: int = 18) -> None:
    example = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT], output_names=outputs,
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
            raise ExportError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc


def export_features(backbone: nn.Module, name: str, pooling: str, path: str | Path, input_size: int) -> Path:
    """The frozen backbone alone (normalised images in, ``features`` out: its pooled vector) as ONNX: the
    feature cache runs it with onnxruntime, 2.5x torch eager on a CPU (``benchmarks/bench_model.py``)."""
    path = Path(path)
    was_training = backbone.training
    try:
        _export(_PooledBackbone(backbone, name, pooling).eval(), path, input_size, ["features"])
    finally:
        backbone.train(was_training)
    return path


@dataclass
class Parity:
    """Largest differences between onnxruntime and torch on real chips."""

    max_abs_logits: float
    max_abs_embedding: float
    images: int
    max_abs_features: float = 0.0  # the feature maps (relative to their largest value)

    @property
    def max_abs(self) -> float:
        """The largest of the differences."""
        return max(self.max_abs_logits, self.max_abs_embedding, self.max_abs_features)


def export_onnx(model: SkywayMultiLabelClassifier, path: str | Path, input_size: int, metadata: dict[str, Any],
                opset: int = 18) -> Path:
    """Write ``model`` (an SMLC) as ONNX with outputs ``logits`` and ``embedding`` and ``metadata``."""
    import onnx

    path = Path(path)
    was_training = model.training
    module = _Exportable(model).eval()
    try:
        _export(module, path, input_size, [*OUTPUTS, *MAP_OUTPUTS], opset)
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.producer_name = "imagesim"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def session(path: str | Path, threads: int = 0, optimize: bool = True) -> Any:
    """An onnxruntime session on the best installed execution provider (CUDA when there)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), options, providers=providers)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``imagesim`` metadata of an exported model."""
    meta = session(path).get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ExportError(f"{path} has no imagesim metadata: not a model exported by imagesim")
    return json.loads(meta[METADATA_KEY])


@torch.inference_mode()
def check_parity(model: SkywayMultiLabelClassifier, path: str | Path, images: torch.Tensor) -> Parity:
    """Max absolute differences between torch and onnxruntime on ``images`` (N, 3, S, S); the feature maps'
    relative to their largest magnitude (their values reach the tens)."""
    was_training = model.training
    module = _Exportable(model).eval()
    try:
        expected = [t.numpy() for t in module(images)]
    finally:
        model.train(was_training)
    got = dict(zip([*OUTPUTS, *MAP_OUTPUTS], session(path).run([*OUTPUTS, *MAP_OUTPUTS],
                                                                {INPUT: images.numpy().astype(np.float32)})))
    want = dict(zip([*OUTPUTS, *MAP_OUTPUTS], expected))

    def diff(name: str, relative: bool = False) -> float:
        scale = max(float(np.abs(want[name]).max()), 1.0) if relative else 1.0
        return float(np.abs(got[name] - want[name]).max()) / scale

    return Parity(diff("logits"), diff("embedding"), len(images), max(diff(n, relative=True) for n in MAP_OUTPUTS))


__all__ = ["ExportError", "INPUT", "MAP_OUTPUTS", "METADATA_KEY", "OUTPUTS", "Parity", "check_parity",
           "export_features", "export_onnx", "read_metadata", "session"]
