"""The query engine the CLI and the search service share: by chip, by image, by positive and negative examples.

Query vector (refinement rule, Rocchio's): with unit-length embeddings P of the positive examples
and N of the negative ones, ``q = normalise(mean(P) - beta * mean(N))`` (``beta`` 0.5). A result's
score is its cosine similarity with ``q``; a negative example pulls ``q`` away from itself, so
its look-alikes score lower and drop down the list.

Filters (all optional, combined with "and"): a WGS84 bounding box the chip meets; predicted
labels (each label's probability at or above the threshold stored with the model); a date range;
catalog ids. The store applies them inside its nearest-neighbour search (FAISS: an allow-mask over
its ids, ``search.index.search``; pgvector: SQL conditions with iterative index scans), so ``k``
results come back whenever ``k`` chips pass the filters.

Spread: the places of the example chips (all their acquisitions) are never returned, a place
appears at most once (its best acquisition), and with ``spread`` at most one result comes from
each neighbourhood (the zoom-``spread_zoom`` ancestor cell: 625 m at 15), so ten copies of one
field don't fill the page.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import shapely

from imagesim_pipeline.chips.naming import ChipName, ChipNameError
from imagesim_pipeline.dataset.splits import block_of
from imagesim_pipeline.embeddings.cell_embeddings import read_cell_embeddings, vectors
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.registry import DEFAULT_NAME, served_version
from imagesim_pipeline.search.bbox import MAX_K
from imagesim_pipeline.search.index import normalise
from imagesim_pipeline.search.stores import Item, VectorStore, open_store
from imagesim_pipeline.storage import Bucket

if TYPE_CHECKING:
    from imagesim_pipeline.embeddings.encoder import OnnxEncoder

BETA = 0.5


class SearchError(ImagesimError):
    """A query that cannot be answered: unknown chip, unreadable image, bad filter; the message says which."""


class UnknownChipError(SearchError):
    """A chip id that is malformed or not in the index."""


@dataclass(frozen=True)
class Filters:
    """Restrictions on the chips a search may return (all must hold)."""
    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north (degrees)
    labels: tuple[str, ...] = ()
    since: date | None = None
    until: date | None = None
    catalog_ids: tuple[str, ...] = ()

    def active(self) -> bool:
        """Whether any filter is set."""
        return bool(self.bbox or self.labels or self.since or self.until or self.catalog_ids)


@dataclass
class Hit:
    """One search result: the chip, its score and what the index knows of it."""
    rank: int
    chip: str
    score: float
    place: str
    date: date
    catalog_id: str
    geometry: shapely.Geometry
    labels: list[tuple[str, float]] = field(default_factory=list)  # predicted labels, most probable first

    def to_feature(self) -> dict:
        """A GeoJSON feature."""
        return {"type": "Feature", "geometry": shapely.geometry.mapping(self.geometry),
                "properties": {"rank": self.rank, "chip": self.chip, "score": round(self.score, 6),
                               "place": self.place, "date": self.date.isoformat(), "catalog_id": self.catalog_id,
                               "labels": [name for name, _ in self.labels]}}


@dataclass
class Example:
    """A query example: a chip id of the index, or an image's bytes (encoded with the model)."""

    chip: str | None = None
    image: bytes | None = None
    name: str = ""


class SearchEngine:
    """Queries over the index of one model version (default: the one search serves, ``serving.json``), on the
    configured vector engine (``search.stores``)."""

    def __init__(self, bucket: Bucket, name: str = DEFAULT_NAME, version: str = "",
                 store: VectorStore | None = None) -> None:
        self.bucket = bucket
        self.name = name
        self.version = version or served_version(bucket, name)
        self.store = store or open_store(bucket, self.version)
        self.build = self.store.build  # a rebuild of the same version has another
        self.labels: list[str] = self.store.labels
        self.thresholds = self.store.thresholds
        self._encoder: OnnxEncoder | None = None
        self._cells: dict[str, dict[str, np.ndarray] | None] = {}  # cell -> chip -> embedding, a few recent cells
        self._cells_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.store)

    # -- query vectors ---------------------------------------------------------------------
    def vector_of_chip(self, chip: str) -> np.ndarray:
        """The chip's embedding: from the index when it stores it losslessly (float32, float16), otherwise
        from its cell's embeddings file (the last few cells read are kept)."""
        try:
            name = ChipName.parse(chip)
        except ChipNameError as exc:
            raise UnknownChipError(f"unknown chip id {chip!r}: {exc}") from None
        stored = self.store.embedding(chip)
        if stored is not None:
            return stored
        cell = self._cell_vectors(name.tile.id) if self.store.item(chip) is not None else None
        if cell is None or chip not in cell:
            raise UnknownChipError(f"unknown chip id {chip!r}: not among the {len(self)} chips indexed for model "
                                   f"{self.version} (materialize chip_embeddings and similarity_index for its cell)")
        return cell[chip]

    def _cell_vectors(self, cell: str) -> dict[str, np.ndarray] | None:
        with self._cells_lock:  # the search service queries from several threads
            if cell in self._cells:
                return self._cells[cell]
        table = read_cell_embeddings(self.bucket, self.version, cell)
        found = None if table is None else dict(zip(table.column("chip").to_pylist(), vectors(table)))
        with self._cells_lock:
            if len(self._cells) >= 8:
                self._cells.pop(next(iter(self._cells)))
            self._cells[cell] = found
        return found

    def vector_of_image(self, image: bytes, name: str = "image") -> np.ndarray:
        """An image's embedding through the same ONNX model and preprocessing as the index."""
        from imagesim_pipeline.embeddings.encoder import OnnxEncoder

        if self._encoder is None:
            self._encoder = OnnxEncoder.from_bucket(self.bucket, self.name, self.version, batch_size=1)
        out = self._encoder.encode([image])
        if out.bad:
            raise SearchError(f"{name} is not a readable image (JPEG, PNG or anything Pillow reads)")
        return out.embeddings[0]

    def _vector(self, example: Example) -> np.ndarray:
        if example.chip is not None:
            return self.vector_of_chip(example.chip)
        return self.vector_of_image(example.image or b"", example.name or "image")

    # -- what the index holds ---------------------------------------------------------------
    def item(self, chip: str) -> Item:
        """The chip's indexed record, or :class:`UnknownChipError`."""
        found = self.store.item(chip)
        if found is None:
            raise UnknownChipError(f"unknown chip id {chip!r}: not among the {len(self)} chips indexed for model "
                                   f"{self.version}")
        return found

    def describe(self, chip: str) -> dict:
        """The chip's place, acquisition, WGS84 outline and every label's probability (most probable first)."""
        it = self.item(chip)
        order = np.argsort(-it.probs)
        return {"chip": chip, "place": it.place, "cell": ChipName.parse(chip).tile.id, "date": it.date,
                "catalog_id": it.catalog_id, "geometry": it.geometry,
                "labels": [(self.labels[j], float(it.probs[j]), bool(it.probs[j] >= self.thresholds[j]))
                           for j in order]}

    def places_in(self, bbox: tuple[float, float, float, float], limit: int) -> tuple[list[Item], int]:
        """The newest chip of each place meeting ``bbox``, at most ``limit``; and the place count."""
        return self.store.newest_per_place(bbox, limit)

    def example_chip(self, label: str) -> str:
        """A chip the model is surest shows ``label`` (the demo's example query), among a sample of the index."""
        j = self.labels.index(label) if label in self.labels else 0
        items = [self.store.item(c) for c in self.store.sample(2000)]
        return max((it for it in items if it is not None), key=lambda it: float(it.probs[j])).chip

    def finds_itself(self, n: int = 100, seed: int = 0) -> tuple[int, float]:
        """Sampled indexed chips queried with their own embedding: (sampled, share whose first hit is itself)."""
        chips = self.store.sample(n, seed)
        found = 0
        for chip in chips:
            first = self.store.nearest(normalise(self.vector_of_chip(chip)[None])[0], 1, Filters(), frozenset())
            found += int(bool(first) and first[0][1].chip == chip)
        return len(chips), found / max(len(chips), 1)

    # -- filters -----------------------------------------------------------------------------
    def check(self, filters: Filters) -> Filters:
        """``filters`` if they make sense for this index, else :class:`SearchError` saying which does not."""
        if filters.bbox:
            w, s, e, n = filters.bbox
            if not (w <= e and s <= n):
                raise SearchError(f"bbox {filters.bbox} is not west,south,east,north")
        for label in filters.labels:
            if label not in self.labels:
                raise SearchError(f"unknown label {label!r}; the model's labels: {', '.join(self.labels)}")
        return filters

    def why_empty(self, filters: Filters) -> str:
        """Which filter leaves no indexed chip, and what the index holds instead (for a 0-result answer)."""
        reasons = []
        extent = self.store.extent()
        if filters.catalog_ids:
            known = extent.catalog_ids
            unknown = sorted(set(filters.catalog_ids) - set(known))
            if unknown:
                reasons.append(f"catalog id(s) {', '.join(unknown)} are not in the index, which holds "
                               f"{', '.join(known[:12])}{' ...' if len(known) > 12 else ''}")
        if filters.bbox and extent.bounds and not self.store.count(Filters(bbox=filters.bbox)):
            w, s, e, n = extent.bounds
            reasons.append(f"the bbox meets no indexed chip; the index covers {w:.4f},{s:.4f},{e:.4f},{n:.4f}")
        if (filters.since or filters.until) and not self.store.count(Filters(since=filters.since,
                                                                             until=filters.until)):
            reasons.append(f"no chip was acquired in that date range; the index holds {extent.first} to "
                           f"{extent.last}")
        return "; ".join(reasons) or "no indexed chip passes all the filters together; drop one to widen the search"

    # -- queries -----------------------------------------------------------------------------
    def query(self, positives: Sequence[Example], negatives: Sequence[Example] = (), k: int = 10,
              filters: Filters = Filters(), spread: bool = False, spread_zoom: int = 15,
              beta: float = BETA) -> list[Hit]:
        """The ``k`` best chips for "more like ``positives``, less like ``negatives``"."""
        if not positives:
            raise SearchError("a query needs at least one positive example")
        if not 1 <= k <= MAX_K:
            raise SearchError(f"k must be between 1 and {MAX_K}; got {k}")
        self.check(filters)
        pos = normalise(np.stack([self._vector(e) for e in positives]))
        q = pos.mean(axis=0)
        if negatives:
            q = q - beta * normalise(np.stack([self._vector(e) for e in negatives])).mean(axis=0)
        q = normalise(q[None].astype(np.float32))[0]
        examples = frozenset(ChipName.parse(e.chip).cell.id for e in (*positives, *negatives) if e.chip is not None)
        return self._collect(q, k, filters, spread, spread_zoom, examples)

    def by_chip(self, chip: str, k: int = 10, filters: Filters = Filters(), spread: bool = False) -> list[Hit]:
        """The chips most like an indexed chip (its own place left out)."""
        return self.query([Example(chip=chip)], k=k, filters=filters, spread=spread)

    def by_image(self, image: bytes, k: int = 10, filters: Filters = Filters(), spread: bool = False,
                 name: str = "image") -> list[Hit]:
        """The chips most like an uploaded image."""
        return self.query([Example(image=image, name=name)], k=k, filters=filters, spread=spread)

    def _collect(self, q: np.ndarray, k: int, filters: Filters, spread: bool, spread_zoom: int,
                 excluded: frozenset[str] = frozenset()) -> list[Hit]:
        """Ask the store for a growing number of candidates until ``k`` distinct places (and neighbourhoods),
        none of them ``excluded``, are found."""
        fetch = k * (4 if spread else 2)
        while True:
            candidates = self.store.nearest(q, fetch, filters, excluded)
            hits: list[Hit] = []
            seen_places, seen_blocks = set(excluded), set()
            for score, it in candidates:
                block = block_of(it.place, spread_zoom) if spread else None
                if it.place in seen_places or block in seen_blocks:
                    continue
                seen_places.add(it.place)
                if spread:
                    seen_blocks.add(block)
                hits.append(self._hit(len(hits) + 1, it, score))
                if len(hits) == k:
                    return hits
            if len(candidates) < fetch:  # the store has no more
                return hits
            fetch *= 4

    def _hit(self, rank: int, it: Item, score: float) -> Hit:
        order = np.argsort(-it.probs)
        labels = [(self.labels[j], float(it.probs[j])) for j in order if it.probs[j] >= self.thresholds[j]]
        return Hit(rank, it.chip, score, it.place, it.date, it.catalog_id, it.geometry, labels)


def hits_to_geojson(hits: Sequence[Hit], query: dict | None = None) -> dict:
    """Hits as a GeoJSON FeatureCollection, with the query that found them."""
    return {"type": "FeatureCollection", "features": [h.to_feature() for h in hits], "query": query or {}}


__all__ = ["BETA", "Example", "Filters", "Hit", "MAX_K", "SearchEngine", "SearchError", "UnknownChipError",
           "hits_to_geojson"]
