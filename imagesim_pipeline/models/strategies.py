"""Embedding strategies: what the model's ``embedding`` output is and how it is learnt.

Every strategy trains the same classifier head (``logits``: the labels, their thresholds, the
label filters of search) and exports the same ``model.onnx`` contract; they differ in the
``embedding`` that search indexes:

* ``classifier`` — the classifier head's last hidden layer (the reference's SMLC embedding).
* ``metric`` — the same layer, trained with a second loss that makes the cosine similarity of two
  chips' embeddings match the Jaccard similarity of their OSM label sets (metric learning with labels).
* ``label-free`` — a separate projection of the backbone features trained with no labels at all:
  InfoNCE (SimCLR's loss) with positives that cost nothing to know — the other acquisition of the same
  place and the places next to it (Tile2Vec's and SeCo's idea: what lies together looks alike across
  seasons). The classifier head beside it still learns from labels where there are any; its
  gradients never reach the projection.
* ``descriptor`` — no learnt embedding: the backbone's pooled descriptor projected on its principal
  axes (PCA fitted on the training chips' features, no labels), ``pca_dim`` wide.

``benchmarks/bench_embeddings.py`` compares them (and the raw backbone and random vectors) on the
demo's held-out queries; docs/architecture.md records the choice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STRATEGIES = ("classifier", "metric", "label-free", "descriptor")
NEEDS_CACHED_FEATURES = ("label-free", "descriptor")  # pairs of cached features / PCA of the cache


def check_strategy(strategy: str) -> str:
    """The strategy, when it is one; ValueError naming them otherwise."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown embedding strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def hidden_layers(in_features: int, dropout: float) -> nn.Sequential:
    """in → in/2 → in/4, each Linear, ReLU, BatchNorm1d, Dropout (the SMLC head's hidden layers)."""
    widths = [in_features, in_features // 2, in_features // 4]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.BatchNorm1d(b), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def label_set_jaccard(targets: torch.Tensor) -> torch.Tensor:
    """(B, B) Jaccard similarity of the rows' 0/1 label sets; two empty sets count as identical."""
    y = targets.float()
    inter = y @ y.T
    union = y.sum(1, keepdim=True) + y.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def jaccard_metric_loss(embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared gap between the embeddings' pairwise cosine similarity and their label sets' Jaccard."""
    z = F.normalize(embedding, dim=1)
    return F.mse_loss(z @ z.T, label_set_jaccard(targets))


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows: row i of ``a`` and of ``b`` are positives, every other row a negative."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def place_partners(chips: Sequence[str], radius: int = 1) -> list[np.ndarray]:
    """Per chip, the indices of the other chips of its place and of the places within ``radius`` tiles.

    Chips are ``Z<zone>-<quadkey>_<catalog>.jpg`` names; a chip with no partner gets itself (its
    pair is then two copies, which InfoNCE still contrasts against the batch).
    """
    from imagesim_pipeline.ard.grid import ArdCell

    cells = [ArdCell.parse(chip.split("_", 1)[0]) for chip in chips]
    at: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, cell in enumerate(cells):
        at[(cell.zone, *cell.tile)].append(i)
    out = []
    for i, cell in enumerate(cells):
        x, y = cell.tile
        near = [j for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)
                for j in at.get((cell.zone, x + dx, y + dy), ()) if j != i]
        out.append(np.asarray(near or [i], np.int64))
    return out


def fit_pca(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), components (D, dim)) of the principal axes of (N, D) features."""
    x = features.double()
    mean = x.mean(0)
    dim = min(dim, x.shape[0], x.shape[1])
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    return mean.float(), v[:dim].T.float().contiguous()


__all__ = ["NEEDS_CACHED_FEATURES", "STRATEGIES", "check_strategy", "fit_pca",
           "hidden_layers", "info_nce", "jaccard_metric_loss", "label_set_jaccard", "place_partners"]
