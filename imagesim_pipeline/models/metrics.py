"""Multi-label quality figures with torchmetrics, and per-label F2-optimal thresholds.

How labels without positives are counted: a label with no positive chip in a split has no
defined F2 or average precision there. It is left out of the macro F2 and the mAP of that split
(and shown as ``null`` per label), so it neither crashes nor drags the averages to 0 or 1; the
micro F2 and the element-wise accuracy count every label, as usual. ``labels_scored`` says how
many labels the macro figures average over.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MultilabelAccuracy,
    MultilabelAveragePrecision,
    MultilabelFBetaScore,
    MultilabelStatScores,
)
from torchmetrics.functional.classification import multilabel_fbeta_score

THRESHOLD_GRID = torch.tensor([round(0.05 * i, 2) for i in range(1, 20)])  # 0.05 .. 0.95


class MultilabelScores(MetricCollection):
    """Accuracy, F2 (micro and per label), AP per label and support, at one threshold or per label.

    A torchmetrics collection (so it accumulates over batches and, with ``sync``, synchronises across
    DDP processes); :meth:`summary` turns its values into the figures reported.
    """

    def __init__(self, num_labels: int, threshold: float = 0.5, sync: bool = True) -> None:
        common: dict[str, Any] = {"num_labels": num_labels, "threshold": threshold, "sync_on_compute": sync}
        metrics: dict[str, Metric | MetricCollection] = {
            "accuracy": MultilabelAccuracy(average="micro", **common),
            "f2_micro": MultilabelFBetaScore(beta=2.0, average="micro", zero_division=0, **common),
            "f2_label": MultilabelFBetaScore(beta=2.0, average="none", zero_division=0, **common),
            "stats": MultilabelStatScores(average="none", **common),
            "ap_label": MultilabelAveragePrecision(num_labels=num_labels, average="none", sync_on_compute=sync),
        }
        super().__init__(metrics, compute_groups=False)

    @staticmethod
    def summary(values: dict[str, torch.Tensor], labels: Sequence[str]) -> dict[str, Any]:
        """Scalars (accuracy, f2_micro, f2_macro, map) plus per-label f2, ap and support."""
        support = values["stats"][:, 4].long()  # tp + fn: positives of each label
        scored = support > 0
        f2 = values["f2_label"].float()
        ap = torch.nan_to_num(values["ap_label"].float(), nan=0.0)
        return {
            "accuracy": float(values["accuracy"]),
            "f2_micro": float(values["f2_micro"]),
            "f2_macro": float(f2[scored].mean()) if scored.any() else float("nan"),
            "map": float(ap[scored].mean()) if scored.any() else float("nan"),
            "labels_scored": int(scored.sum()),
            "per_label": {name: {"f2": float(f2[i]) if scored[i] else None,
                                 "ap": float(ap[i]) if scored[i] else None,
                                 "support": int(support[i])} for i, name in enumerate(labels)},
        }


def _scores(preds: torch.Tensor, targets: torch.Tensor, labels: Sequence[str]) -> dict[str, torch.Tensor]:
    # Whole prediction sets scored in one process (rank 0 after a DDP fit): no synchronisation, which
    # would wait for the other ranks, and on NCCL fails outright on these CPU tensors.
    metrics = MultilabelScores(len(labels), sync=False)
    with warnings.catch_warnings():  # "no positive samples" for a label: handled in summary()
        warnings.simplefilter("ignore", UserWarning)
        metrics.update(preds, targets.long())
        return metrics.compute()


def score(probs: torch.Tensor, targets: torch.Tensor, labels: Sequence[str],
          thresholds: Sequence[float] | float = 0.5) -> dict[str, Any]:
    """Figures for probabilities ``probs`` (N, L) against 0/1 ``targets`` at one or per-label thresholds.

    A label is predicted when its probability is at least its threshold; ranking metrics (AP)
    use the probabilities themselves.
    """
    probs, targets = probs.float(), targets.float()
    cut = torch.as_tensor([thresholds] * probs.shape[1] if isinstance(thresholds, (int, float)) else list(thresholds),
                          dtype=probs.dtype)
    values = _scores((probs >= cut).float(), targets, labels)  # 0/1 predictions: 0.5 separates them
    values["ap_label"] = _scores(probs, targets, labels)["ap_label"]
    return MultilabelScores.summary(values, labels)


def f2_optimal_thresholds(probs: torch.Tensor, targets: torch.Tensor, default: float = 0.5,
                          grid: torch.Tensor = THRESHOLD_GRID) -> list[float]:
    """Per label, the threshold on ``grid`` with the best F2 on these chips (usually val).

    A label without positives here keeps ``default``; ties go to the threshold nearest 0.5.
    """
    n = probs.shape[1]
    f2 = torch.stack([multilabel_fbeta_score((probs >= t).long(), targets.long(), beta=2.0, num_labels=n,
                                             average="none", zero_division=0)
                      for t in grid])  # (thresholds, labels)
    positives = targets.sum(0)
    chosen = []
    for j in range(n):
        if positives[j] == 0:
            chosen.append(default)
            continue
        candidates = torch.nonzero(f2[:, j] >= f2[:, j].max() - 1e-9).flatten()
        pick = candidates[torch.argmin((grid[candidates] - 0.5).abs())]
        chosen.append(round(float(grid[pick]), 4))  # grid values are round: stored == compared
    return chosen


__all__ = ["MultilabelScores", "THRESHOLD_GRID", "f2_optimal_thresholds", "score"]
