"""The SMLC's training examples: chips and labels per split, and the torch datasets over them.

:class:`LabelledChips` says which chips there are, with which labels, and where their images are;
:class:`ChipImages` decodes them (an unreadable chip is an :class:`Unreadable`, left out of its
batch by :func:`collate_skipping` and counted); :class:`FeatureSet` and :class:`PairedFeatureSet`
serve cached backbone features instead (the frozen-backbone fast path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.preprocess import CorruptImageError, Preprocessing, augment, decode, to_input

if TYPE_CHECKING:
    from imagesim_pipeline.storage import Bucket


@dataclass
class SplitData:
    """The chips of one split and their dense 0/1 labels."""

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
        """A reader of this dataset's chip images."""
        return ChipReader(self.source, self.version.startswith("csv:"))


class ChipReader:
    """Reads chip bytes by name from a bucket or a folder; picklable (opens the bucket lazily per process)."""

    def __init__(self, source: str, is_folder: bool) -> None:
        self.source, self.is_folder = source, is_folder
        self._bucket: Bucket | None = None

    def __call__(self, chip: str) -> bytes:
        """The bytes of a chip's image."""
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


@dataclass(frozen=True)
class Unreadable:
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


def collate_skipping(items: list[Any], report_unreadable: bool = False) -> tuple[Any, ...]:
    """(images, labels, indices, unreadable count): unreadable chips are left out and counted.

    With ``report_unreadable`` a fifth element, the indices of the unreadable chips (a long tensor),
    lets the loading process add them up per split (the collate runs in the loader's workers).
    """
    good = [item for item in items if item is not None and not isinstance(item, Unreadable)]
    corrupt = len(items) - len(good)
    batch: tuple[Any, ...]
    if good:
        images, targets, index = zip(*good, strict=True)
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

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator over DataLoader's iterator
        for batch in super().__iter__():
            if self.record is not None:
                self.record(batch)
            yield batch


class FeatureSet(Dataset):
    """(backbone features, labels) from the cache; with several views per chip, a random view each time."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.features = features if features.ndim == 3 else features[None]  # (views, N, D)
        self.targets = targets

    def __len__(self) -> int:
        return self.features.shape[1]

    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(features of a random view, labels) of chip ``i``."""
        view = int(torch.randint(0, self.features.shape[0], ())) if self.features.shape[0] > 1 else 0
        return self.features[view, i], self.targets[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.example(i)


class PairedFeatureSet(FeatureSet):
    """(features, labels, partner features): the partner is a random chip of the same or a neighbouring place
    (:func:`~imagesim_pipeline.models.strategies.place_partners`), the ``label-free`` strategy's positive."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, partners: list[np.ndarray]) -> None:
        super().__init__(features, targets)
        if len(partners) != len(self):
            raise ValueError(f"{len(partners)} partner lists for {len(self)} chips")
        self.partners = partners

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        x, y = self.example(i)
        options = self.partners[i]
        j = int(options[int(torch.randint(0, len(options), ()))])
        return x, y, self.example(j)[0]


__all__ = ["ChipImages", "ChipReader", "FeatureSet", "LabelledChips", "PairedFeatureSet", "RecordingLoader",
           "SplitData", "Unreadable", "collate_skipping"]
