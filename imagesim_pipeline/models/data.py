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
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.dataset.splits import SPLITS, block_of, footprint_of, split_of
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.preprocess import CorruptImageError, Preprocessing, augment, decode, to_input

Progress = Callable[[str], None]


class DataError(ImagesimError):
    """The training data cannot be found or read; the message says which and what to do."""


@dataclass
class SplitData:
    chips: list[str]
    targets: np.ndarray  # (N, L) uint8


@dataclass
class LabelledChips:
    """Chips and dense labels per split, the label names, and where the images are."""

    labels: list[str]
    splits: dict[str, SplitData]
    source: str  # bucket URI or chip folder
    version: str  # dataset version, or "csv:<sha>" for the reference's inputs

    def reader(self) -> ChipReader:
        return ChipReader(self.source, self.version.startswith("csv:"))


class ChipReader:
    """Reads chip bytes by name from a bucket or a folder; picklable (opens the bucket lazily per process)."""

    def __init__(self, source: str, is_folder: bool) -> None:
        self.source, self.is_folder = source, is_folder
        self._bucket = None

    def __call__(self, chip: str) -> bytes:
        if self.is_folder:
            root = Path(self.source)
            path = root / chip
            if not path.exists():
                path = root / chip[1:3] / chip  # a chips/<zone>/ layout
            return path.read_bytes()
        if self._bucket is None:
            from imagesim_pipeline.storage import open_bucket

            self._bucket = open_bucket(self.source)
        return self._bucket.read_bytes(chip_key(ChipName.parse(chip)))

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "is_folder": self.is_folder, "_bucket": None}


def load_dataset_version(bucket_uri: str, version: str = "") -> LabelledChips:
    """The chips and labels of a dataset version in the bucket (default: the latest)."""
    from imagesim_pipeline.dataset.build import DatasetError, read_manifest
    from imagesim_pipeline.dataset.read import iter_dense
    from imagesim_pipeline.storage import StorageError, open_bucket

    bucket = open_bucket(bucket_uri)
    try:
        manifest = read_manifest(bucket, version or None)
        labels = [label["name"] for label in manifest["vocabulary"]["labels"]]
        splits = {}
        for split in SPLITS:
            chips: list[str] = []
            parts = []
            for names, matrix in iter_dense(bucket, manifest["version"], split):
                chips += names
                parts.append(matrix.astype(np.uint8))
            splits[split] = SplitData(chips, np.concatenate(parts) if parts else np.zeros((0, len(labels)), np.uint8))
    except (DatasetError, StorageError) as exc:
        raise DataError(str(exc)) from None
    return LabelledChips(labels, splits, bucket.uri, manifest["version"])


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


class Unreadable(NamedTuple):
    """What :class:`ChipImages` gives for a chip that cannot be read or decoded: its index."""

    index: int


class ChipImages(Dataset):
    """(normalised image, labels, index) per chip; :class:`Unreadable` for a chip that cannot be read or decoded."""

    def __init__(self, chips: Sequence[str], targets: np.ndarray, reader: Callable[[str], bytes],
                 prep: Preprocessing, train: bool = False) -> None:
        self.chips, self.targets, self.reader, self.prep, self.train = list(chips), targets, reader, prep, train

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int] | Unreadable:
        try:
            image = decode(self.reader(self.chips[i]))
        except (CorruptImageError, OSError, ImagesimError):
            return Unreadable(i)
        if self.train:
            image = augment(image)
        return to_input(image, self.prep), torch.from_numpy(self.targets[i].astype(np.float32)), i


def collate_skipping(items: list[Any], report_unreadable: bool = False) -> tuple:
    """(images, labels, indices, unreadable count): unreadable chips are left out and counted.

    With ``report_unreadable`` a fifth element, the indices of the unreadable chips (a long tensor),
    lets the loading process add them up per split (the collate runs in the loader's workers).
    """
    good = [item for item in items if item is not None and not isinstance(item, Unreadable)]
    corrupt = len(items) - len(good)
    if good:
        images, targets, index = zip(*good)
        batch = (torch.stack(images), torch.stack(targets), torch.tensor(index), corrupt)
    else:
        batch = (torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long), corrupt)
    if report_unreadable:
        batch += (torch.tensor([item.index for item in items if isinstance(item, Unreadable)], dtype=torch.long),)
    return batch


class RecordingLoader(DataLoader):
    """A DataLoader that hands each batch to ``record`` (in the loading process) before yielding it.

    Lightning re-creates it with a distributed sampler under DDP; ``record`` is kept (it is an
    ``__init__`` argument, which Lightning saves).
    """

    def __init__(self, *args: Any, record: Callable[[Any], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record

    def __iter__(self):
        for batch in super().__iter__():
            if self.record is not None:
                self.record(batch)
            yield batch


def union_over_ranks(sets: dict[str, set[int]]) -> dict[str, set[int]]:
    """The union of each split's set over the processes of a distributed run (each reads its own shard)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sets
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {s: sorted(v) for s, v in sets.items()})
    return {s: set().union(*(r.get(s, ()) for r in everyone)) for s in sets}


class FeatureSet(Dataset):
    """(backbone features, labels) from the cache; with several views per chip, a random view each time."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features = features if features.ndim == 3 else features[None]  # (views, N, D)
        self.targets = targets

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        view = int(torch.randint(0, self.features.shape[0], ())) if self.features.shape[0] > 1 else 0
        return self.features[view, i], self.targets[i]


class PairedFeatureSet(FeatureSet):
    """(features, labels, partner features): the partner is a random chip of the same or a neighbouring place
    (:func:`~imagesim_pipeline.models.strategies.place_partners`), the ``label-free`` strategy's positive."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, partners: list[np.ndarray]) -> None:
        super().__init__(features, targets)
        if len(partners) != len(self):
            raise ValueError(f"{len(partners)} partner lists for {len(self)} chips")
        self.partners = partners

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(i)
        options = self.partners[i]
        j = int(options[int(torch.randint(0, len(options), ()))])
        return x, y, super().__getitem__(j)[0]


def default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


class SmlcDataModule(L.LightningDataModule):
    """Chips of a dataset version (or the reference's chip folder + CSV), as cached features or images.

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
        from imagesim_pipeline.models.features import AUGMENTATIONS

        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}; got {augmentation!r}")
        if bool(chip_dir) != bool(labels_csv):
            raise ValueError("chip_dir and labels_csv go together (the reference's inputs)")
        self.save_hyperparameters()
        self.prep = Preprocessing(size=input_size)
        self.num_workers = default_workers() if num_workers < 0 else num_workers
        if chip_dir:
            self.data = load_reference_inputs(chip_dir, labels_csv)
        else:
            from imagesim_pipeline.settings import bucket_uri

            self.data = load_dataset_version(bucket or bucket_uri(), dataset_version)
        self.labels = self.data.labels
        self.progress: Progress = lambda message: None
        self.cache_key = ""
        self.corrupt: dict[str, list[str]] = {}
        self._unreadable: dict[str, set[int]] = {s: set() for s in SPLITS}  # image path: indices met, per split
        self._sets: dict[str, Dataset] = {}

    @property
    def dataset_version(self) -> str:
        return self.data.version

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        if self.hparams.cache_features:
            from imagesim_pipeline.models.features import cached_features

            cache = cached_features(self.data, self.hparams.backbone, self.hparams.weights or None, self.prep,
                                    self.hparams.augmentation, self.hparams.batch_size, self.num_workers,
                                    progress=self.progress, pooling=self.hparams.pooling)
            self.cache_key = cache.key
            for split in SPLITS:
                features, targets, corrupt = cache.split(split)
                self.corrupt[split] = corrupt
                if split == "train" and self.hparams.strategy == "label-free":
                    from imagesim_pipeline.models.strategies import place_partners

                    unreadable = set(corrupt)
                    chips = [c for c in self.data.splits[split].chips if c not in unreadable]
                    self._sets[split] = PairedFeatureSet(features, targets, place_partners(chips))
                else:
                    self._sets[split] = FeatureSet(features, targets)
        else:
            reader = self.data.reader()
            for split in SPLITS:
                part = self.data.splits[split]
                self._sets[split] = ChipImages(part.chips, part.targets, reader, self.prep, train=split == "train")

    def train_features(self) -> torch.Tensor:
        """(N, D) cached features of the training chips (the first view): what the descriptor's PCA is fitted on."""
        self.setup("fit")
        train = self._sets["train"]
        if not isinstance(train, FeatureSet):
            raise DataError("the training features are only at hand with cache_features (CLI: --data.cache_features "
                            "true)")
        return train.features[0]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self._sets[split]
        if isinstance(data, FeatureSet):
            return DataLoader(data, batch_size=self.hparams.batch_size, shuffle=shuffle,
                              drop_last=shuffle and len(data) > self.hparams.batch_size)
        return RecordingLoader(data, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                               collate_fn=partial(collate_skipping, report_unreadable=True),
                               persistent_workers=self.num_workers > 0,
                               drop_last=shuffle and len(data) > self.hparams.batch_size,
                               record=partial(self._record_unreadable, split))

    def _record_unreadable(self, split: str, batch: tuple) -> None:
        self._unreadable[split].update(batch[4].tolist())

    def unreadable_counts(self) -> dict[str, int]:
        """Per split, the number of distinct chips left out as unreadable.

        With cached features, every chip was read to build the cache: these are all the unreadable
        ones. On the image path, these are the ones met in the batches read so far: train and val by
        the fit (gathered from every DDP rank at its end), val and test by
        :func:`~imagesim_pipeline.models.training.predict`, which reads those splits whole. A chip
        that only a dropped last partial training batch would have held is never read, so not met.
        """
        if self.hparams.cache_features:
            return {s: len(self.corrupt.get(s, ())) for s in SPLITS}
        return {s: len(self._unreadable[s]) for s in SPLITS}

    def teardown(self, stage: str) -> None:
        if stage == "fit" and not self.hparams.cache_features:
            self._unreadable = union_over_ranks(self._unreadable)  # every rank ends the fit here

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_loader(self, split: str) -> DataLoader:
        return self._loader(split, shuffle=False)


__all__ = ["ChipImages", "ChipReader", "DataError", "FeatureSet", "LabelledChips", "RecordingLoader",
           "PairedFeatureSet", "SmlcDataModule", "SplitData", "Unreadable", "collate_skipping", "load_dataset_version",
           "load_reference_inputs", "union_over_ranks"]
