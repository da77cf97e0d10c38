"""The records of a dataset version: ``datasets/<version>/manifest.json`` and ``datasets/latest.json``.

Both are read and written through :mod:`imagesim_pipeline.storage.records`; their JSON keys are
what users and tests read, so a field here is a key there.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from imagesim_pipeline.dataset.config import DatasetConfig

MANIFEST = "manifest.json"


class StoredLabel(BaseModel):
    """One label of the vocabulary as stored; its rules (tags, exclusions, minimums) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str
    geometry: list[str]


class StoredVocabulary(BaseModel):
    """The vocabulary the dataset was labelled with (``Vocabulary.to_json``)."""

    model_config = ConfigDict(extra="allow")

    labels: list[StoredLabel]
    fingerprint: str

    @property
    def names(self) -> list[str]:
        """Label names in id order (the columns of the label matrix)."""
        return [label.name for label in self.labels]


class DatasetCounts(BaseModel):
    """Chips, blocks and label-free chips per split, and why chips were left out."""

    chips: int
    by_split: dict[str, int]
    blocks_by_split: dict[str, int]
    label_free_by_split: dict[str, int]
    dropped: dict[str, int]
    kept_without_cloud_mask: int = 0  # counted since the cloud filter came; older manifests lack it


class DatasetInput(BaseModel):
    """One cell's label table that went in: its chips, content hash and chips left out as unpublished."""

    cell: str
    chips: int
    sha256: str
    unverified: dict[str, list[str]] | None = None  # reason -> chips; absent from the JSON when all were verified

    @model_serializer(mode="wrap")
    def _omit_unverified(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.unverified is None:
            data.pop("unverified", None)
        return data


class SkippedCell(BaseModel):
    """A cell whose labels could not be used, and why."""

    cell: str
    reason: str


class DatasetFile(BaseModel):
    """A file of the version, as uploaded."""

    sha256: str
    bytes: int


class DatasetManifest(BaseModel):
    """``datasets/<version>/manifest.json``: written last, it marks the version complete."""

    version: str
    created: str = Field(description="ISO 8601 UTC, to the second")
    config: DatasetConfig
    vocabulary: StoredVocabulary
    counts: DatasetCounts
    label_counts: dict[str, dict[str, int]] = Field(description="split -> label -> chips")
    inputs: list[DatasetInput]
    skipped_cells: list[SkippedCell]
    files: dict[str, DatasetFile]


class LatestDataset(BaseModel):
    """``datasets/latest.json``: the version training reads by default."""

    version: str


__all__ = ["MANIFEST", "DatasetCounts", "DatasetFile", "DatasetInput", "DatasetManifest", "LatestDataset",
           "SkippedCell", "StoredLabel", "StoredVocabulary"]
