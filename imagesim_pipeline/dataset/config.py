"""What a dataset version is built from: the selection of chips and the split (``training_dataset``'s config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from imagesim_pipeline.dataset.splits import check_fractions


@dataclass
class DatasetConfig:
    """Which chips a version keeps and how they are split; stored in its manifest."""

    version: str = ""  # empty: derived from the inputs
    block_zoom: int = 15  # blocks of 625 m: the unit of splitting
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    keep_classes: list[str] = field(default_factory=lambda: ["all data"])
    unlabelled_share: float = 0.1  # share of label-free chips kept (chosen by place, not by acquisition)
    max_cloud_fraction: float = 1.0

    @property
    def fractions(self) -> dict[str, float]:
        """The share of blocks per split."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        check_fractions(self.fractions)
        if not 13 <= self.block_zoom <= 19:
            raise ValueError(f"block_zoom must be 13..19 (coarser than a level-12 cell is pointless); "
                             f"got {self.block_zoom}")
        if not 0 <= self.unlabelled_share <= 1:
            raise ValueError(f"unlabelled_share must be within 0..1; got {self.unlabelled_share}")
        if not 0 <= self.max_cloud_fraction <= 1:
            raise ValueError(f"max_cloud_fraction must be within 0..1; got {self.max_cloud_fraction}")
        if self.version and not all(c.isalnum() or c in "-_." for c in self.version):
            raise ValueError(f"version {self.version!r} may only hold letters, digits, - _ .")

    def selection(self) -> dict[str, Any]:
        """The config minus the version name: what decides the content."""
        return {k: v for k, v in asdict(self).items() if k != "version"}


__all__ = ["DatasetConfig"]
