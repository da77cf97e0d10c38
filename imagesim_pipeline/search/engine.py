"""The query engine the CLI and the search service share: by chip, by image, by positive and negative examples.

Query vector (refinement rule, Rocchio's): with unit-length embeddings P of the positive examples
and N of the negative ones, ``q = normalise(mean(P) - beta * mean(N))`` (``beta`` 0.5). A result's
score is its cosine similarity with ``q``; a negative example pulls ``q`` away from itself, so
its look-alikes score lower and drop down the list.

Filters (all optional, combined with "and"): a WGS84 bounding box the chip meets; predicted
labels (each label's probability at or above the threshold stored with the model); a date range;
catalog ids. They become an allow-mask over the index's ids, which the FAISS search honours
(``search.index.search``), so ``k`` results come back whenever ``k`` chips pass the filters.

Spread: the places of the example chips (all their acquisitions) are never returned, a place
appears at most once (its best acquisition), and with ``spread`` at most one result comes from
each neighbourhood (the zoom-``spread_zoom`` ancestor cell: 625 m at 15), so ten copies of one
field don't fill the page.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import date
from typing import Sequence

import numpy as np
import shapely

from imagesim_pipeline.chips.naming import ChipName, ChipNameError
from imagesim_pipeline.dataset.splits import block_of
from imagesim_pipeline.embeddings.cell_embeddings import read_cell_embeddings, vectors
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.registry import DEFAULT_NAME, served_version
from imagesim_pipeline.search.bbox import MAX_K
from imagesim_pipeline.search.catalog import load_index
from imagesim_pipeline.search.index import normalise, search, stored_vector
from imagesim_pipeline.storage import Bucket

BETA = 0.5


class SearchError(ImagesimError):
    """A query that cannot be answered: unknown chip, unreadable image, bad filter; the message says which."""


class UnknownChipError(SearchError):
    """A chip id that is malformed or not in the index."""


@dataclass(frozen=True)
class Filters:
    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north (degrees)
    labels: tuple[str, ...] = ()
    since: date | None = None
    until: date | None = None
    catalog_ids: tuple[str, ...] = ()

    def active(self) -> bool:
        return bool(self.bbox or self.labels or self.since or self.until or self.catalog_ids)


@dataclass
class Hit:
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
    """Queries over ``index/<version>/`` of one model version (default: the one search serves, ``serving.json``)."""

    def __init__(self, bucket: Bucket, name: str = DEFAULT_NAME, version: str = "") -> None:
        self.bucket = bucket
        self.name = name
        self.version = version or served_version(bucket, name)
        self.index, items, manifest = load_index(bucket, self.version)
        self.build = manifest.build  # a rebuild of the same version has another
        self.labels: list[str] = manifest.labels
        self.thresholds = np.asarray(manifest.thresholds, np.float32)
        self.chips = np.asarray(items.column("chip").to_pylist(), dtype=object)
        self.places = np.asarray(items.column("place").to_pylist(), dtype=object)
        self.catalog_ids = np.asarray(items.column("catalog_id").to_pylist(), dtype=object)
        self.dates = items.column("date").to_numpy(zero_copy_only=False).astype("datetime64[D]")
        self.bounds = np.stack([items.column(c).to_numpy() for c in ("minx", "miny", "maxx", "maxy")], axis=1) \
            if items.num_rows else np.zeros((0, 4))
        self.geometry = items.column("geometry")
        self.probs = vectors(items, "probs") if items.num_rows else np.zeros((0, len(self.labels)), np.float32)
        self.row_of = {chip: i for i, chip in enumerate(self.chips)}
        names, self.place_codes = np.unique(self.places.astype(str), return_inverse=True) if len(self.places) \
            else (np.zeros(0, str), np.zeros(0, np.int64))
        self.place_code = {name: code for code, name in enumerate(names.tolist())}
        self._encoder = None
        self._cells: dict[str, dict[str, np.ndarray] | None] = {}  # cell -> chip -> embedding, a few recent cells
        self._cells_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.chips)

    # -- query vectors ---------------------------------------------------------------------
    def vector_of_chip(self, chip: str) -> np.ndarray:
        """The chip's embedding: from the index when it stores it losslessly (float32, float16), otherwise
        from its cell's embeddings file (the last few cells read are kept)."""
        try:
            name = ChipName.parse(chip)
        except ChipNameError as exc:
            raise UnknownChipError(f"unknown chip id {chip!r}: {exc}") from None
        if chip in self.row_of:
            stored = stored_vector(self.index, self.row_of[chip])
            if stored is not None:
                return stored
        cell = self._cell_vectors(name.tile.id) if chip in self.row_of else None
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
    def row(self, chip: str) -> int:
        """The chip's row in the index, or :class:`UnknownChipError`."""
        if chip not in self.row_of:
            raise UnknownChipError(f"unknown chip id {chip!r}: not among the {len(self)} chips indexed for model "
                                   f"{self.version}")
        return self.row_of[chip]

    def describe(self, chip: str) -> dict:
        """The chip's place, acquisition, WGS84 outline and every label's probability (most probable first)."""
        i = self.row(chip)
        order = np.argsort(-self.probs[i])
        return {"chip": chip, "place": self.places[i], "cell": ChipName.parse(chip).tile.id,
                "date": self.dates[i].astype(date), "catalog_id": self.catalog_ids[i],
                "geometry": self.wgs84(i),
                "labels": [(self.labels[j], float(self.probs[i, j]), bool(self.probs[i, j] >= self.thresholds[j]))
                           for j in order]}

    def places_in(self, bbox: tuple[float, float, float, float], limit: int) -> tuple[list[int], int]:
        """Rows of the newest chip of each place meeting ``bbox``, at most ``limit``; and the place count."""
        w, s, e, n = bbox
        b = self.bounds
        rows = np.flatnonzero((b[:, 0] <= e) & (b[:, 2] >= w) & (b[:, 1] <= n) & (b[:, 3] >= s))
        if not len(rows):
            return [], 0
        newest = rows[np.lexsort((-self.dates[rows].astype(np.int64), self.place_codes[rows]))]
        first = np.r_[True, self.place_codes[newest][1:] != self.place_codes[newest][:-1]]
        newest = newest[first]
        return newest[:limit].tolist(), len(newest)

    def wgs84(self, i: int) -> shapely.Geometry:
        return shapely.from_wkb(self.geometry[i].as_py())

    # -- filters -----------------------------------------------------------------------------
    def mask(self, filters: Filters) -> np.ndarray:
        """The chips that pass ``filters``."""
        keep = np.ones(len(self), bool)
        if filters.bbox:
            w, s, e, n = filters.bbox
            if not (w <= e and s <= n):
                raise SearchError(f"bbox {filters.bbox} is not west,south,east,north")
            b = self.bounds
            keep &= (b[:, 0] <= e) & (b[:, 2] >= w) & (b[:, 1] <= n) & (b[:, 3] >= s)
        for label in filters.labels:
            if label not in self.labels:
                raise SearchError(f"unknown label {label!r}; the model's labels: {', '.join(self.labels)}")
            j = self.labels.index(label)
            keep &= self.probs[:, j] >= self.thresholds[j]
        if filters.since:
            keep &= self.dates >= np.datetime64(filters.since, "D")
        if filters.until:
            keep &= self.dates <= np.datetime64(filters.until, "D")
        if filters.catalog_ids:
            keep &= np.isin(self.catalog_ids, list(filters.catalog_ids))
        return keep

    def why_empty(self, filters: Filters) -> str:
        """Which filter leaves no indexed chip, and what the index holds instead (for a 0-result answer)."""
        reasons = []
        if filters.catalog_ids:
            known = sorted(set(self.catalog_ids.tolist()))
            unknown = sorted(set(filters.catalog_ids) - set(known))
            if unknown:
                reasons.append(f"catalog id(s) {', '.join(unknown)} are not in the index, which holds "
                               f"{', '.join(known[:12])}{' ...' if len(known) > 12 else ''}")
        if filters.bbox and not self.mask(Filters(bbox=filters.bbox)).any():
            w, s, e, n = self.bounds[:, 0].min(), self.bounds[:, 1].min(), self.bounds[:, 2].max(), self.bounds[:, 3].max()
            reasons.append(f"the bbox meets no indexed chip; the index covers {w:.4f},{s:.4f},{e:.4f},{n:.4f}")
        if (filters.since or filters.until) and not self.mask(Filters(since=filters.since, until=filters.until)).any():
            reasons.append(f"no chip was acquired in that date range; the index holds {self.dates.min()} to "
                           f"{self.dates.max()}")
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
        pos = normalise(np.stack([self._vector(e) for e in positives]))
        q = pos.mean(axis=0)
        if negatives:
            q = q - beta * normalise(np.stack([self._vector(e) for e in negatives])).mean(axis=0)
        q = normalise(q[None].astype(np.float32))
        # Without filters no mask at all: the examples' places are dropped from the candidates
        # instead, so a query costs no O(n) work at millions of chips.
        allowed = self.mask(filters) if filters.active() else None
        examples = {ChipName.parse(e.chip).cell.id for e in (*positives, *negatives) if e.chip is not None}
        return self._collect(q, k, allowed, spread, spread_zoom, examples)

    def by_chip(self, chip: str, k: int = 10, filters: Filters = Filters(), spread: bool = False) -> list[Hit]:
        return self.query([Example(chip=chip)], k=k, filters=filters, spread=spread)

    def by_image(self, image: bytes, k: int = 10, filters: Filters = Filters(), spread: bool = False,
                 name: str = "image") -> list[Hit]:
        return self.query([Example(image=image, name=name)], k=k, filters=filters, spread=spread)

    def _collect(self, q: np.ndarray, k: int, allowed: np.ndarray | None, spread: bool, spread_zoom: int,
                 excluded: set[str] = frozenset()) -> list[Hit]:
        """Search with a growing candidate count until ``k`` distinct places (and neighbourhoods), none of
        them ``excluded``, are found."""
        available = int(allowed.sum()) if allowed is not None else len(self)
        fetch = min(available, k * (4 if spread else 2) + 4 * len(excluded))
        hits: list[Hit] = []
        while fetch > 0:
            scores, ids = search(self.index, q, fetch, allowed=allowed)
            hits, seen_places, seen_blocks = [], set(excluded), set()
            for score, i in zip(scores[0], ids[0]):
                if i < 0:
                    break
                place = self.places[i]
                block = block_of(place, spread_zoom) if spread else None
                if place in seen_places or block in seen_blocks:
                    continue
                seen_places.add(place)
                if spread:
                    seen_blocks.add(block)
                hits.append(self._hit(len(hits) + 1, int(i), float(score)))
                if len(hits) == k:
                    return hits
            if fetch >= available:
                break
            fetch = min(available, fetch * 4)
        return hits

    def _hit(self, rank: int, i: int, score: float) -> Hit:
        order = np.argsort(-self.probs[i])
        labels = [(self.labels[j], float(self.probs[i, j])) for j in order if self.probs[i, j] >= self.thresholds[j]]
        return Hit(rank, self.chips[i], score, self.places[i], self.dates[i].astype(date), self.catalog_ids[i],
                   self.wgs84(i), labels)


def hits_to_geojson(hits: Sequence[Hit], query: dict | None = None) -> dict:
    return {"type": "FeatureCollection", "features": [h.to_feature() for h in hits], "query": query or {}}


__all__ = ["BETA", "Example", "Filters", "Hit", "MAX_K", "SearchEngine", "SearchError", "UnknownChipError",
           "hits_to_geojson"]
