"""``metrics.json`` of a model version as a typed record: one writer (training), one reader (the registry).

Training writes it when it stages a version (:func:`~imagesim_pipeline.models.training.train_and_stage`)
and again, with ``onnx`` and ``checks``, when the export is checked; everything else reads it through
:func:`~imagesim_pipeline.models.registry.read_metrics`. Files written by earlier versions still load:
fields added since (``settings_id``, ``data.unreadable``, ``training.strategy``, ``training.pooling``,
``training.label_weight``, ``onnx.max_rel_features``...) have defaults, and keys this code does not
know are kept. A record is written back with the keys it was read or made with (fields left at their
defaults are not added), as ``json.dumps`` writes them (``NaN`` for an undefined figure).

Pydantic only: `imagesim model report` reads it without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")  # keys of other versions survive a rewrite


class LabelScore(_Record):
    """One label's figures on a split; ``f2`` and ``ap`` are None where the split has no positive."""

    f2: float | None = None
    ap: float | None = None
    support: int = 0


class Scores(_Record):
    """Figures of a split at one threshold or at per-label thresholds (``models.metrics.score``)."""

    accuracy: float
    f2_micro: float
    f2_macro: float
    map: float
    labels_scored: int = 0
    per_label: dict[str, LabelScore] = {}


class Evaluation(_Record):
    """Thresholds chosen on val, val figures, and test figures at 0.5 and at those thresholds."""

    thresholds: list[float]
    val: Scores
    test: Scores
    test_at_thresholds: Scores


class DataInfo(_Record):
    """What the version was trained on, and the chips the export is checked on."""

    dataset_version: str
    input_size: int
    chips: dict[str, int]
    unreadable: dict[str, int] | None = None  # per split; None in files written before they were counted
    feature_cache: str | None = None
    preprocessing: dict[str, Any] = {}
    source: str = ""
    parity_chips: list[str] = []


class TrainingInfo(_Record):
    """How the version was trained."""

    backbone: str
    weights: str = "default"
    head: str = ""
    unfreeze_last_stage: bool = False
    lr: float
    eta_min: float
    strategy: str = "classifier"  # files written before strategies existed
    pooling: str = "avg"  # files written before pooling was a setting
    embedding_dim: int | None = None
    label_weight: float = 0.0  # files written before the label part of the embedding existed
    epochs: int
    seconds: float
    device: str = ""
    cached_features: bool = True
    augmentation: str = "none"
    resumed_from: str | None = None


class OnnxInfo(_Record):
    """The export's size and its largest differences from torch on real chips."""

    max_abs_diff: float
    max_abs_logits: float
    max_abs_embedding: float
    max_rel_features: float = 0.0  # files written before the export carried feature maps
    images: int
    bytes: int


class ModelMetrics(_Record):
    """``metrics.json``: the version's figures, the baselines of the same run, data, training, export, checks."""

    name: str
    version: str
    settings_id: str = ""  # files written before versions had settings ids: the version itself
    labels: list[str]
    thresholds: list[float]
    val: Scores
    test: Scores
    test_at_thresholds: Scores
    val_loss: float
    baselines: dict[str, Evaluation] = {}  # only with cached features
    data: DataInfo
    training: TrainingInfo
    onnx: OnnxInfo | None = None  # set once exported
    checks: dict[str, bool] | None = None  # set once exported and checked

    @property
    def settings(self) -> str:
        """The hash of the settings that made the version (several versions may share it)."""
        return self.settings_id or self.version

    @property
    def beats_baselines(self) -> bool:
        """Test micro F2 at thresholds and mAP above every baseline computed in the same run."""
        return all(self.test_at_thresholds.f2_micro > b.test_at_thresholds.f2_micro and self.test.map > b.test.map
                   for b in self.baselines.values())

    def to_json(self) -> str:
        """The JSON written to ``metrics.json`` (the keys it was made or read with, ``NaN`` kept)."""
        return json.dumps(self.model_dump(exclude_unset=True), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetrics:
        """A record from ``metrics.json`` text (``json`` parses the ``NaN`` it writes)."""
        return cls.model_validate(json.loads(text))


@dataclass
class Benchmark:
    """The reference benchmark and the project's floors, checked before a model is published."""

    max_val_loss: float = 0.3
    min_val_accuracy: float = 0.85
    min_test_f2: float = 0.5  # micro F2 at the stored thresholds
    max_onnx_diff: float = 1e-3

    def reference_benchmark(self, metrics: ModelMetrics) -> bool:
        """The reference's benchmark on val: loss and accuracy."""
        return metrics.val_loss < self.max_val_loss and metrics.val.accuracy > self.min_val_accuracy

    def results(self, metrics: ModelMetrics) -> dict[str, bool]:
        """Every check by name: the reference benchmark, the test F2 floor and, once exported, ONNX parity."""
        out = {"reference_benchmark": self.reference_benchmark(metrics),
               "test_f2_floor": metrics.test_at_thresholds.f2_micro >= self.min_test_f2}
        if metrics.onnx is not None:
            out["onnx_parity"] = metrics.onnx.max_abs_diff <= self.max_onnx_diff
        return out


__all__ = ["Benchmark", "DataInfo", "Evaluation", "LabelScore", "ModelMetrics", "OnnxInfo", "Scores",
           "TrainingInfo"]
