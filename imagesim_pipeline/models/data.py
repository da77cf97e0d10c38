"""Training data for the SMLC: chips and their labels per split, as images or as cached features.

Two sources of (chip, labels):

* a dataset version in the bucket (local folder or S3): ``datasets/<version>/chips.parquet``,
  images under ``chips/<zone>/`` — the default, the latest version;
* the reference's inputs: a chip folder and a ``sparse_label_encodings.csv`` (``chip,labels``
  with space-separated label ids), split by the same spatial blocks as the dataset builder.

A chip whose JPEG is missing or corrupt is skipped and counted, never a crash: per split in
:meth:`SmlcDataModule.unreadable_counts` (from the feature cache, or on the image path from the
batches read), and per batch in the image batches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from imagesim_pipeline.dataset.splits import SPLITS, block_of, footprint_of, split_of
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.datasets import (
    ChipImages,
    FeatureSet,
    LabelledChips,
    PairedFeatureSet,
    RecordingLoader,
    SplitData,
    collate_skipping,
)
from imagesim_pipeline.models.features import AUGMENTATIONS, cached_features
from imagesim_pipeline.models.preprocess import Preprocessing

Progress = Callable[[str], None]


class DataError(ImagesimError):
    """The training data cannot be found or read; the message says which and what to do."""


def load_dataset_version(bucket_uri: str, version: str = "") -> LabelledChips:
    """The chips and labels of a dataset version in the bucket (default: the latest)."""
    from imagesim_pipeline.dataset.build import DatasetError, read_manifest
    from imagesim_pipeline.dataset.read import iter_dense
    from imagesim_pipeline.storage import StorageError, open_bucket
    from imagesim_pipeline.storage.records import CorruptRecordError

    bucket = open_bucket(bucket_uri)
    try:
        manifest = read_manifest(bucket, version or None)
        labels = manifest.vocabulary.names
        splits = {}
        for split in SPLITS:
            chips: list[str] = []
            parts = []
            for names, matrix in iter_dense(bucket, manifest.version, split):
                chips += names
                parts.append(matrix.astype(np.uint8))
            splits[split] = SplitData(chips, np.concatenate(parts) if parts else np.zeros((0, len(labels)), np.uint8))
    except (DatasetError, StorageError, CorruptRecordError) as exc:
        raise DataError(str(exc)) from None
    return LabelledChips(labels, splits, bucket.uri, manifest.version)


def load_reference_inputs(chip_dir: str, labels_csv: str, label_names: Sequence[str] | None = None,
                          block_zoom: int = 15, fractions: dict[str, float] | None = None,
                          seed: int = 0) -> LabelledChips:
    """A chip folder and a ``sparse_label_encodings.csv``, split by spatial blocks like the dataset builder.

    Label names come from ``label_names``, else a ``vocabulary.json`` beside the CSV, else the
    default vocabulary.
    """
    import hashlib

    from imagesim_pipeline.labels.encoding import dense, read_sparse_csv

    csv_path = Path(labels_csv)
    if not csv_path.is_file():
        raise DataError(f"label file {csv_path} does not exist")
    if not Path(chip_dir).is_dir():
        raise DataError(f"chip folder {chip_dir} does not exist")
    if label_names is None:
        vocab = csv_path.with_name("vocabulary.json")
        if vocab.is_file():
            label_names = [label["name"] for label in json.loads(vocab.read_text())["labels"]]
        else:
            from imagesim_pipeline.labels import load_vocabulary

            label_names = load_vocabulary(None).names
    text = csv_path.read_text(encoding="utf-8")
    try:
        encodings = read_sparse_csv(text, len(label_names))
    except ValueError as exc:
        raise DataError(f"{csv_path}: {exc}") from None
    fractions = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for chip in encodings:
        by_split[split_of(block_of(footprint_of(chip), block_zoom), fractions, seed)].append(chip)
    splits = {s: SplitData(chips, dense([encodings[c] for c in chips], len(label_names)).astype(np.uint8))
              for s, chips in by_split.items()}
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return LabelledChips(list(label_names), splits, str(Path(chip_dir).resolve()), f"csv:{digest}")


def union_over_ranks(sets: dict[str, set[int]]) -> dict[str, set[int]]:
    """The union of each split's set over the processes of a distributed run (each reads its own shard)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sets
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {s: sorted(v) for s, v in sets.items()})
    return {s: set().union(*(r.get(s, ()) for r in everyone)) for s in sets}


def default_workers() -> int:
    """Data loader processes by default: one less than the cores, at most 4."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class DataSettings:
    """The data module's settings (its saved hyperparameters), typed."""

    bucket: str
    dataset_version: str
    chip_dir: str
    labels_csv: str
    input_size: int
    batch_size: int
    num_workers: int
    cache_features: bool
    augmentation: str
    backbone: str
    weights: str
    pooling: str
    strategy: str


class SmlcDataModule(L.LightningDataModule):
    """Chips of a dataset version (or the reference's chip folder + CSV), as cached features or images.

    Making one reads nothing: the chips and labels are read on first use (:attr:`labels`, which the
    model needs before training, or :meth:`setup`), and :meth:`setup` builds the datasets (the
    feature cache, computed when missing, or the images).

    Args:
        bucket: bucket root (default: the configured bucket).
        dataset_version: dataset version (default: the latest in the bucket).
        chip_dir: the reference's input: a folder of chips (instead of a dataset version).
        labels_csv: the reference's input: ``sparse_label_encodings.csv`` for ``chip_dir``.
        input_size: side of the model input in pixels.
        batch_size: batch size.
        num_workers: data loader processes (image path and feature encoding).
        cache_features: train the head on backbone features computed once and cached in the
            bucket (the frozen-backbone fast path); off to train on images (fine-tuning).
        augmentation: views cached per training chip: ``none`` or ``d4`` (the 8 flips/rotations).
        backbone: backbone name (linked from the model).
        weights: backbone weights (linked from the model).
        pooling: how backbone maps become features (linked from the model).
        strategy: the embedding strategy (linked from the model): ``label-free`` pairs each training chip
            with a chip of the same or a neighbouring place.
    """

    def __init__(self, bucket: str = "", dataset_version: str = "", chip_dir: str = "", labels_csv: str = "",
                 input_size: int = 224, batch_size: int = 64, num_workers: int = -1, cache_features: bool = True,
                 augmentation: str = "none", backbone: str = "efficientnet_lite0", weights: str = "",
                 pooling: str = "avg", strategy: str = "classifier") -> None:
        super().__init__()
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}; got {augmentation!r}")
        if bool(chip_dir) != bool(labels_csv):
            raise ValueError("chip_dir and labels_csv go together (the reference's inputs)")
        self.save_hyperparameters()
        self.settings = DataSettings(bucket, dataset_version, chip_dir, labels_csv, input_size, batch_size,
                                     num_workers, cache_features, augmentation, backbone, weights, pooling, strategy)
        self.prep = Preprocessing(size=input_size)
        self.num_workers = default_workers() if num_workers < 0 else num_workers
        self.progress: Progress = lambda message: None
        self.cache_key = ""
        self.corrupt: dict[str, list[str]] = {}  # cached features: the unreadable chips, per split
        self._data: LabelledChips | None = None
        self._unreadable: dict[str, set[int]] = {s: set() for s in SPLITS}  # image path: indices met, per split
        self._sets: dict[str, ChipImages | FeatureSet] = {}

    @property
    def data(self) -> LabelledChips:
        """The chips and labels per split, read on first use."""
        if self._data is None:
            if self.settings.chip_dir:
                self._data = load_reference_inputs(self.settings.chip_dir, self.settings.labels_csv)
            else:
                from imagesim_pipeline.settings import bucket_uri

                self._data = load_dataset_version(self.settings.bucket or bucket_uri(), self.settings.dataset_version)
        return self._data

    @property
    def labels(self) -> list[str]:
        """The label names, in the dataset vocabulary's order."""
        return self.data.labels

    @property
    def dataset_version(self) -> str:
        """The dataset version trained on (``csv:<sha>`` for the reference's inputs)."""
        return self.data.version

    def setup(self, stage: str | None = None) -> None:
        """Build every split's dataset once: cached features (computed when missing) or images."""
        if self._sets:
            return
        data, settings = self.data, self.settings
        if settings.cache_features:
            cache = cached_features(data, settings.backbone, settings.weights or None, self.prep,
                                    settings.augmentation, settings.batch_size, self.num_workers,
                                    progress=self.progress, pooling=settings.pooling)
            self.cache_key = cache.key
            for split in SPLITS:
                features, targets, corrupt = cache.split(split)
                self.corrupt[split] = corrupt
                if split == "train" and settings.strategy == "label-free":
                    from imagesim_pipeline.models.strategies import place_partners

                    self._sets[split] = PairedFeatureSet(features, targets, place_partners(self.readable_chips(split)))
                else:
                    self._sets[split] = FeatureSet(features, targets)
        else:
            reader = data.reader()
            for split in SPLITS:
                part = data.splits[split]
                self._sets[split] = ChipImages(part.chips, part.targets, reader, self.prep, train=split == "train")

    def dataset(self, split: str) -> ChipImages | FeatureSet:
        """The dataset of a split (built by :meth:`setup`)."""
        if split not in self._sets:
            raise DataError(f"the {split} split is not set up: call setup() first")
        return self._sets[split]

    def chip_counts(self) -> dict[str, int]:
        """Per split, the chips trained or scored on (with cached features, the readable ones)."""
        return {s: len(self.dataset(s)) for s in SPLITS}

    def readable_chips(self, split: str) -> list[str]:
        """The chips of a split, less those the feature cache found unreadable (in the datasets' order)."""
        unreadable = set(self.corrupt.get(split, ()))
        return [c for c in self.data.splits[split].chips if c not in unreadable]

    def split_features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) cached features of a split's chips (the first view) and their (N, L) labels."""
        self.setup("fit")
        part = self.dataset(split)
        if not isinstance(part, FeatureSet):
            raise DataError("backbone features are only at hand with cache_features (CLI: --data.cache_features "
                            "true)")
        return part.features[0], part.targets

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data, batch_size = self.dataset(split), self.settings.batch_size
        if isinstance(data, FeatureSet):
            return DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                              drop_last=shuffle and len(data) > batch_size)
        return RecordingLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                               collate_fn=partial(collate_skipping, report_unreadable=True),
                               persistent_workers=self.num_workers > 0,
                               drop_last=shuffle and len(data) > batch_size,
                               record=partial(self._record_unreadable, split))

    def _record_unreadable(self, split: str, batch: tuple[Any, ...]) -> None:
        self._unreadable[split].update(batch[4].tolist())

    def unreadable_counts(self) -> dict[str, int]:
        """Per split, the number of distinct chips left out as unreadable.

        With cached features, every chip was read to build the cache: these are all the unreadable
        ones. On the image path, these are the ones met in the batches read so far: train and val by
        the fit (gathered from every DDP rank at its end), val and test by
        :func:`~imagesim_pipeline.models.training.predict`, which reads those splits whole. A chip
        that only a dropped last partial training batch would have held is never read, so not met.
        """
        if self.settings.cache_features:
            return {s: len(self.corrupt.get(s, ())) for s in SPLITS}
        return {s: len(self._unreadable[s]) for s in SPLITS}

    def teardown(self, stage: str) -> None:
        """After a fit on images: gather the unreadable chips every DDP rank met."""
        if stage == "fit" and not self.settings.cache_features:
            self._unreadable = union_over_ranks(self._unreadable)  # every rank ends the fit here

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader("test", shuffle=False)

    def predict_loader(self, split: str) -> DataLoader:
        """Batches of a split in order, for scoring it whole."""
        return self._loader(split, shuffle=False)


__all__ = ["DataError", "DataSettings", "SmlcDataModule", "default_workers", "load_dataset_version",
           "load_reference_inputs", "union_over_ranks"]
