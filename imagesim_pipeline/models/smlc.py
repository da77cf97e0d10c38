"""SkywayMultiLabelClassifier (SMLC): a frozen ImageNet backbone with an MLP head, as a LightningModule.

The head is in → in/2 → in/4 → labels; each hidden layer is Linear, ReLU, BatchNorm1d and
Dropout. The last hidden layer (in/4 wide) is the chip *embedding* used for similarity search;
``forward`` returns ``(logits, embedding)``. Trained with ``BCEWithLogitsLoss``, Adam and a cosine
schedule that decays (``eta_min`` below the learning rate).

Batches are ``(x, y)``: when ``x`` is 2-D it holds backbone features (the frozen-feature fast
path, see :mod:`imagesim_pipeline.models.features`) and only the head runs; when 4-D it holds
normalised images and the backbone runs too (needed to fine-tune its last stage). The
``label-free`` strategy's training batches are ``(x, y, x_partner)``: a chip's features and those of
a chip of the same or a neighbouring place.

``strategy`` chooses what the ``embedding`` output is (:mod:`imagesim_pipeline.models.strategies`);
``pooling`` how the backbone's maps become the feature vector (:mod:`imagesim_pipeline.models.backbones`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from imagesim_pipeline.models.backbones import build_backbone, feature_width, freeze, pooled_features, spec_of
from imagesim_pipeline.models.metrics import MultilabelScores
from imagesim_pipeline.models.strategies import (
    check_strategy,
    fit_pca,
    hidden_layers,
    info_nce,
    jaccard_metric_loss,
)

STAGES = ("train", "val", "test")


@dataclass(frozen=True)
class SmlcSettings:
    """The model's settings (its saved hyperparameters, less the labels), typed."""

    backbone: str
    weights: str
    unfreeze_last_stage: bool
    lr: float
    eta_min: float
    weight_decay: float
    dropout: float
    threshold: float
    pooling: str
    strategy: str
    metric_weight: float
    temperature: float
    pca_dim: int
    label_weight: float = 0.0


def with_labels(logits: torch.Tensor, embedding: torch.Tensor, weight: float) -> torch.Tensor:
    """``embedding`` (weight 0), or the unit embedding followed by ``weight`` times the unit vector of the label
    probabilities less 0.5: cosine similarity then mixes appearance (1) and labels (``weight`` squared)."""
    if weight <= 0:
        return embedding
    labels = torch.sigmoid(logits) - 0.5
    return torch.cat([F.normalize(embedding, dim=1), weight * F.normalize(labels, dim=1)], dim=1)


class MlpHead(nn.Module):
    """in → in/2 → in/4 → n_labels; returns (logits, last hidden layer)."""

    def __init__(self, in_features: int, n_labels: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.hidden = hidden_layers(in_features, dropout)
        self.classifier = nn.Linear(in_features // 4, n_labels)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, last hidden layer) of pooled backbone features."""
        embedding = self.hidden(features)
        return self.classifier(embedding), embedding


class SkywayMultiLabelClassifier(L.LightningModule):
    """The SMLC.

    Args:
        labels: label names, in the dataset vocabulary's order (linked from the data module).
        backbone: ``efficientnet_lite0`` (the default), ``efficientnet_lite1`` or ``efficientnet_lite2`` (offline
            ImageNet weights), or ``resnet50`` (the reference's).
        weights: backbone weights: a file, a URL, ``random``, or empty for the backbone's default.
        unfreeze_last_stage: also train the backbone's last stage (needs image batches).
        lr: Adam learning rate.
        eta_min: the cosine schedule's floor (below ``lr``: the rate decays over ``max_epochs``).
        weight_decay: Adam weight decay (L2). The default 1e-3 was chosen on the demo's val split
            (``benchmarks/tune_head.py``): val loss 0.21 instead of 0.29 at nearly the same val mAP
            (the head stops growing over-confident).
        dropout: dropout of the head's hidden layers.
        threshold: the decision threshold of the logged metrics.
        pooling: ``avg`` (the backbone's own) or ``multiscale`` (plus a GeM pool of an earlier stage).
        strategy: the embedding: ``classifier``, ``metric``, ``label-free`` or ``descriptor``.
        metric_weight: weight of the ``metric`` strategy's Jaccard loss beside the classification loss.
        temperature: the ``label-free`` strategy's InfoNCE temperature.
        pca_dim: width of the ``descriptor`` strategy's embedding.
        label_weight: when above 0, the exported ``embedding`` is the strategy's embedding (unit length)
            followed by the label probabilities less 0.5 (unit length, times this weight): search then
            ranks chips by what the classifier says they show first, by how they look second. Training is
            unchanged (only search uses it), so a version that differs in it alone trains the same head.
            Ignored by the ``label-free`` strategy, whose embedding must not depend on labels.
    """

    # only with the label-free strategy
    embedder: nn.Module
    projector: nn.Module
    # only with the descriptor strategy (buffers)
    pca_mean: torch.Tensor
    pca_components: torch.Tensor

    def __init__(self, labels: list[str], backbone: str = "efficientnet_lite0", weights: str = "",
                 unfreeze_last_stage: bool = False, lr: float = 1e-3, eta_min: float = 1e-5,
                 weight_decay: float = 1e-3, dropout: float = 0.2, threshold: float = 0.5, pooling: str = "avg",
                 strategy: str = "classifier", metric_weight: float = 1.0, temperature: float = 0.1,
                 pca_dim: int = 256, label_weight: float = 0.0) -> None:
        super().__init__()
        check_strategy(strategy)
        if label_weight < 0:
            raise ValueError(f"label_weight must be 0 (off) or positive, got {label_weight}")
        if len(labels) < 2:
            raise ValueError(f"the model needs at least two labels (multi-label metrics); got {list(labels)}")
        if eta_min >= lr:
            raise ValueError(f"eta_min ({eta_min}) must be below lr ({lr}): a cosine schedule from lr to a larger "
                             "eta_min raises the learning rate instead of decaying it")
        self.save_hyperparameters()
        self.settings = SmlcSettings(backbone, weights, unfreeze_last_stage, lr, eta_min, weight_decay, dropout,
                                     threshold, pooling, strategy, metric_weight, temperature, pca_dim, label_weight)
        self.labels = list(labels)
        spec = spec_of(backbone)
        self.backbone = build_backbone(backbone, weights or None)
        freeze(self.backbone, backbone, unfreeze_last_stage)
        width = feature_width(spec.name, pooling)
        self.head = MlpHead(width, len(self.labels), dropout)
        if strategy == "label-free":  # its own embedding, learnt without labels, and a training-only projector
            self.embedder = hidden_layers(width, dropout)
            self.projector = nn.Sequential(nn.Linear(width // 4, width // 4), nn.ReLU(), nn.Linear(width // 4, 128))
        if strategy == "descriptor":  # fitted at the start of training (buffers: saved in checkpoints)
            self.register_buffer("pca_mean", torch.zeros(width))
            self.register_buffer("pca_components", torch.zeros(width, pca_dim))
        self.loss = nn.BCEWithLogitsLoss()
        self.scores = nn.ModuleDict({f"{s}_scores": MultilabelScores(len(self.labels), threshold) for s in STAGES})

    # -- model ---------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        """Width of the pooled backbone features the head takes."""
        return feature_width(self.settings.backbone, self.settings.pooling)

    @property
    def embedding_dim(self) -> int:
        """Width of the embedding search indexes."""
        width = self.settings.pca_dim if self.settings.strategy == "descriptor" else self.feature_dim // 4
        return width + (len(self.labels) if self.label_weight > 0 else 0)

    @property
    def label_weight(self) -> float:
        """The weight of the label probabilities in the search embedding: 0 for the ``label-free`` strategy."""
        return 0.0 if self.settings.strategy == "label-free" else self.settings.label_weight

    def train(self, mode: bool = True) -> SkywayMultiLabelClassifier:
        """Frozen backbone layers stay in eval mode (their BatchNorm statistics are ImageNet's);
        with ``unfreeze_last_stage`` only that stage trains."""
        super().train(mode)
        if mode:
            self.backbone.eval()
            if self.settings.unfreeze_last_stage:
                self.backbone.get_submodule(spec_of(self.settings.backbone).last_stage).train()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of normalised images."""
        return pooled_features(self.backbone, self.settings.backbone, images, self.settings.pooling)

    def head_outputs(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) of pooled backbone features, as the strategy defines the embedding."""
        logits, hidden = self.head(features)
        strategy = self.settings.strategy
        if strategy == "label-free":
            return logits, self.embedder(features)
        if strategy == "descriptor":
            return logits, (features - self.pca_mean) @ self.pca_components
        return logits, hidden

    def search_embedding(self, logits: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """What search indexes: ``embedding`` itself, or with ``label_weight`` > 0 the unit embedding followed
        by ``label_weight`` times the unit vector of the label probabilities less 0.5."""
        return with_labels(logits, embedding, self.label_weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) of normalised images (B, 3, H, W) or of backbone features (B, D)."""
        if x.ndim == 4:
            if self.settings.unfreeze_last_stage:
                x = self.features(x)
            else:
                with torch.no_grad():
                    x = self.features(x)
        elif x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"expected images (B, 3, H, W) or features (B, {self.feature_dim}); got {tuple(x.shape)}")
        return self.head_outputs(x)

    # -- training ------------------------------------------------------------------------
    def _step(self, batch: Any, stage: str) -> torch.Tensor | None:
        x, y = batch[0], batch[1]
        if len(batch) > 3:  # image batches count the chips left out as unreadable
            self.log(f"{stage}/corrupt_chips", float(batch[3]), on_step=False, on_epoch=True, reduce_fx="sum",
                     batch_size=1, sync_dist=True)  # summed over DDP ranks: each reads its own share
        if len(y) == 0:
            return None
        logits, embedding = self(x)
        loss = classification = self.loss(logits, y.float())  # stage/loss: the reference's BCE, whatever the strategy
        strategy = self.settings.strategy
        if strategy == "metric":
            metric = jaccard_metric_loss(embedding, y)
            self.log(f"{stage}/metric_loss", metric, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
            loss = loss + self.settings.metric_weight * metric
        elif strategy == "label-free" and len(batch) == 3 and len(y) > 1:  # (features, labels, partner features)
            contrast = info_nce(self.projector(embedding), self.projector(self.embedder(batch[2])),
                                self.settings.temperature)
            self.log(f"{stage}/info_nce", contrast, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
            loss = loss + contrast  # separate parameters: labels never reach the embedder
        self._scores(stage).update(torch.sigmoid(logits.detach()), y.long())
        self.log(f"{stage}/loss", classification, on_step=False, on_epoch=True, prog_bar=stage != "test",
                 batch_size=len(y), sync_dist=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """The batch's loss (None for a batch whose chips were all unreadable)."""
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Log the batch's val loss and accumulate its val figures."""
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Log the batch's test loss and accumulate its test figures."""
        self._step(batch, "test")

    def _scores(self, stage: str) -> MultilabelScores:
        return cast(MultilabelScores, self.scores[f"{stage}_scores"])  # ModuleDict's values are typed Module

    def _epoch_end(self, stage: str) -> None:
        scores = self._scores(stage)
        if not scores["accuracy"].update_called:  # e.g. an epoch with no batches
            return
        summary = MultilabelScores.summary(scores.compute(), self.labels)
        scores.reset()
        figures = {f"{stage}/{k}": summary[k] for k in ("accuracy", "f2_micro", "f2_macro", "map")}
        for name, per in summary["per_label"].items():
            if per["f2"] is not None:
                figures[f"{stage}/f2/{name}"] = per["f2"]
        # The collection's compute() already gathered every DDP rank: the values agree; syncing them is free.
        self.log_dict(figures, prog_bar=False, sync_dist=True)
        self.log(f"{stage}/f2", summary["f2_micro"], prog_bar=stage != "test", sync_dist=True)

    def on_fit_start(self) -> None:
        """The ``descriptor`` strategy's PCA, from the training chips' cached features (no labels)."""
        if self.settings.strategy == "descriptor" and not bool(self.pca_components.abs().sum()):
            from imagesim_pipeline.models.data import SmlcDataModule

            data = getattr(self.trainer, "datamodule", None)
            if not isinstance(data, SmlcDataModule):
                raise TypeError("the descriptor strategy fits its PCA on an SmlcDataModule's cached features")
            features = data.split_features("train")[0]
            mean, components = fit_pca(features, self.settings.pca_dim)
            self.pca_mean.copy_(mean.to(self.pca_mean.device))
            self.pca_components.zero_()
            self.pca_components[:, : components.shape[1]].copy_(components.to(self.pca_components.device))

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training figures."""
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's val figures."""
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        """Log the test figures."""
        self._epoch_end("test")

    def configure_optimizers(self) -> Any:
        """Adam on the trainable parameters, with a cosine schedule over ``max_epochs``."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        epochs = max(1, int(self.trainer.max_epochs or 1)) if self._trainer is not None else 1
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=self.settings.eta_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


__all__ = ["MlpHead", "SkywayMultiLabelClassifier", "SmlcSettings", "with_labels"]
