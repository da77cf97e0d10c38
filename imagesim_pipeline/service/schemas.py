"""The search service's request and response bodies (they are its OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from imagesim_pipeline.search.bbox import BboxError, check_bbox
from imagesim_pipeline.search.engine import MAX_K

# A chip id is a file name of the chips folder: never a path (checked again by ChipName.parse).
CHIP_ID_PATTERN = r"^Z\d{2}-[0-3]{13,24}_[A-Za-z0-9_.]{1,64}\.jpg$"
ChipId = Annotated[str, StringConstraints(pattern=CHIP_ID_PATTERN, max_length=128)]
MAX_EXAMPLES = 50


class FiltersIn(BaseModel):
    """Filters of a search: every result meets all of them."""

    bbox: tuple[float, float, float, float] | None = Field(
        None, description="WGS84 west, south, east, north (longitudes -180..180, latitudes -90..90): "
                    "results meet this box")
    labels: list[str] = Field([], max_length=32, description="results are predicted to carry every one of these")
    since: date | None = Field(None, description="results acquired on or after this date")
    until: date | None = Field(None, description="results acquired on or before this date")
    catalog_ids: list[str] = Field([], max_length=64, description="results come from these acquisitions")

    @field_validator("bbox")
    @classmethod
    def _bbox_in_range(cls, bbox: tuple[float, float, float, float] | None):
        """Longitudes -180..180, latitudes -90..90, west <= east, south <= north (the CLI's --bbox checks the same)."""
        if bbox is None:
            return None
        try:
            return check_bbox(bbox)
        except BboxError as exc:  # the message as it is, without pydantic's "Value error, " in front
            raise PydanticCustomError("bbox_range", str(exc).replace("{", "(").replace("}", ")")) from None


class SearchRequest(BaseModel):
    """A search by examples: more like the positives, less like the negatives."""

    positives: list[ChipId] = Field(min_length=1, max_length=MAX_EXAMPLES, description="chips to look like")
    negatives: list[ChipId] = Field([], max_length=MAX_EXAMPLES, description="chips not to look like")
    k: int = Field(10, ge=1, le=MAX_K)
    filters: FiltersIn = FiltersIn()
    spread: bool = Field(False, description="at most one result per 625 m neighbourhood")

    model_config = {"json_schema_extra": {"examples": [{
        "positives": ["Z35-01313111111312103_KOTKAB.jpg"], "negatives": [], "k": 10,
        "filters": {"labels": ["building"], "since": "2023-06-01"}, "spread": False}]}}


class LabelOut(BaseModel):
    """A label the model predicts for a chip, with its probability."""

    label: str
    probability: float
    predicted: bool = Field(description="probability at or above the label's threshold stored with the model")


class HitOut(BaseModel):
    """One search result: a chip, its similarity score, date, labels and outline."""

    rank: int
    chip: str
    score: float = Field(description="cosine similarity with the query vector")
    place: str
    date: date
    catalog_id: str
    labels: list[LabelOut]
    geometry: dict[str, Any] = Field(description="the chip's WGS84 outline, GeoJSON")
    thumbnail: str


class ModelRef(BaseModel):
    """A model version in the registry."""

    name: str
    version: str


class SearchResponse(BaseModel):
    """The results of a search, best first, with the model and the engine's time."""

    model: ModelRef
    index_vectors: int
    took_ms: float = Field(description="time the engine took for this query, in milliseconds")
    k: int
    hits: list[HitOut]


class ChipOut(BaseModel):
    """An indexed chip: labels with probabilities, date, catalog id, outline and source COG."""

    chip: str
    place: str
    cell: str
    date: date
    catalog_id: str
    labels: list[LabelOut]
    geometry: dict[str, Any]
    thumbnail: str
    source_cog: str | None = Field(description="the visual COG the chip was cut from")


class ChangeOut(BaseModel):
    """A place that changed between two consecutive acquisitions, with its before and after chips."""

    place: str
    score: float = Field(description="robust z-score of the change among places of its kind and image pair")
    method: str = Field(description="what the score normalises: feature-maps (the spatial change score) or "
                                    "embedding (the embedding distance, for a model without feature maps)")
    change: float | None = Field(None, description="the spatial change score (mean of the map's most changed "
                                                   "twentieth)")
    distance: float = Field(description="cosine distance of the two acquisitions' embeddings")
    map_url: str | None = Field(None, description="the change map as a heat overlay PNG for the after chip")
    kind: str
    before: str
    after: str
    date_before: date
    date_after: date
    geometry: dict[str, Any]


class ChangesResponse(BaseModel):
    """The most changed places, highest score first."""

    model: ModelRef
    took_ms: float
    pairs: int = Field(description="pairs scored in all")
    changes: list[ChangeOut]


class AreaOut(BaseModel):
    """A delivered area: level-12 cells joined by shared acquisitions."""

    name: str = Field(description="the catalog ids' common prefix (HELSINKI for HELSINKIA, HELSINKIB), else the ids")
    bounds: tuple[float, float, float, float] = Field(description="WGS84 west, south, east, north of its cells")
    cells: int = Field(description="level-12 cells delivered")
    catalog_ids: list[str] = Field(description="the acquisitions over it")


class Health(BaseModel):
    """What the service serves: the model and index, the labels, the acquisitions and the imagery's bounds."""

    status: str = Field(description="ok, or no_index when search cannot answer yet (see detail)")
    detail: str = ""
    model: ModelRef | None = Field(description="the version search serves")
    pending: ModelRef | None = Field(None, description="a newer published version whose index is being built")
    index_build: str = Field("", description="the index build served (a rebuild of the same version has another)")
    index_vectors: int
    index_kind: str = ""
    index_engine: str = ""  # faiss (embedded) or pgvector (shared by every search process)
    labels: list[str]
    acquisitions: list[dict[str, Any]]
    bounds: tuple[float, float, float, float] | None
    start: tuple[float, float] | None = Field(None, description="lon, lat where the page opens the map")
    areas: list[AreaOut] = Field([], description="the delivered areas (cells sharing acquisitions), largest first")
    bucket: str


__all__ = ["AreaOut", "CHIP_ID_PATTERN", "ChangeOut", "ChangesResponse", "ChipId", "ChipOut", "FiltersIn", "Health",
           "HitOut", "LabelOut", "MAX_EXAMPLES", "ModelRef", "SearchRequest", "SearchResponse"]
