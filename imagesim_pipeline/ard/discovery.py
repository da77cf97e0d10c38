"""Find the cells and acquisitions of an ARD delivery from a bucket listing.

Layout (one acquisition = one date folder + one catalog id)::

    ard/<zone>/<quadkey12>/<YYYY-MM-DD>/<catalog_id>-visual.tif     required
                                       /<catalog_id>-pan.tif, -ms.tif  optional
                                       /<catalog_id>-data-mask.gpkg   valid-data polygon
                                       /<catalog_id>-cloud-mask.gpkg  cloud polygons
                                       /<catalog_id>.json             STAC item
    ard/<zone>/<quadkey12>/osm_data.json                              written by the pipeline

Discovery works on a stream of :class:`~imagesim_pipeline.storage.ObjectInfo`, so it runs
the same on a local folder, on S3, or on a generated listing (the benchmark). A malformed
entry becomes a :class:`Problem` naming the key and the reason; the scan goes on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from imagesim_pipeline.ard.grid import TILE_ZOOM, ArdCell, GridError
from imagesim_pipeline.storage import Bucket, ObjectInfo, layout

ASSET_SUFFIXES = {
    "-visual.tif": "visual",
    "-pan.tif": "pan",
    "-ms.tif": "ms",
    "-data-mask.gpkg": "data-mask",
    "-cloud-mask.gpkg": "cloud-mask",
    ".json": "stac",
}
# Files the pipeline itself writes into a cell folder (not part of the delivery).
CELL_PIPELINE_FILES = {"osm_data.json"}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CATALOG_RE = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class Problem:
    """A malformed delivery entry: its key and why it was skipped."""

    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


@dataclass
class Acquisition:
    """One image of a cell: a date and a catalog id, with its asset keys by kind."""

    cell: ArdCell
    date: date
    catalog_id: str
    assets: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    modified: datetime | None = None

    @property
    def folder(self) -> str:
        """The acquisition's folder key, ``ard/<zone>/<quadkey>/<date>``."""
        return f"{layout.ARD}{self.cell.path}/{self.date.isoformat()}"

    @property
    def visual_key(self) -> str:
        """The key of the visual COG."""
        return self.assets["visual"]

    @property
    def bytes(self) -> int:
        """The size of all of its files."""
        return sum(self.sizes.values())


@dataclass
class CellDelivery:
    """Everything delivered for one level-12 cell."""

    cell: ArdCell
    acquisitions: list[Acquisition] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """The size of all acquisitions' files."""
        return sum(a.bytes for a in self.acquisitions)

    @property
    def dates(self) -> list[str]:
        """The acquisition dates, ISO formatted, oldest first."""
        return sorted({a.date.isoformat() for a in self.acquisitions})

    def fingerprint(self) -> str:
        """A short hash of the delivery's keys and sizes: changes when the delivery changes."""
        digest = hashlib.sha256()
        for acq in sorted(self.acquisitions, key=lambda a: (a.date, a.catalog_id)):
            for kind in sorted(acq.assets):
                digest.update(f"{acq.assets[kind]}:{acq.sizes.get(kind, 0)}\n".encode())
        return digest.hexdigest()[:16]


@dataclass
class Discovery:
    """The cells found in a listing, and the entries that could not be used."""

    cells: dict[str, CellDelivery] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def cell_ids(self) -> list[str]:
        """The cell ids found, sorted."""
        return sorted(self.cells)

    @property
    def acquisition_count(self) -> int:
        """Acquisitions over all cells."""
        return sum(len(c.acquisitions) for c in self.cells.values())


def parse_cell_folder(zone: str, quadkey: str) -> ArdCell:
    """The level-12 cell named by an ``ard/<zone>/<quadkey>`` folder, or :class:`GridError`."""
    if not zone.isdigit():
        raise GridError(f"zone folder {zone!r} is not a number")
    cell = ArdCell.parse(f"{int(zone)}/{quadkey}")
    if zone != f"{cell.zone:02d}":
        raise GridError(f"zone folder {zone!r} should be written {cell.zone:02d} (zero-padded)")
    if cell.zoom != TILE_ZOOM:
        raise GridError(f"quadkey {quadkey!r} has {cell.zoom} digits, a delivery cell has {TILE_ZOOM}")
    return cell


def _parse_day(day: str) -> date | str:
    """The date of a ``YYYY-MM-DD`` folder, or the reason it is not one."""
    if not _DATE_RE.match(day):
        return f"date folder {day!r} is not YYYY-MM-DD"
    try:
        return date.fromisoformat(day)
    except ValueError:
        return f"date folder {day!r} is not a calendar date"


def discover(listing: Iterable[ObjectInfo]) -> Discovery:
    """Group a listing of ``ard/`` into cells and acquisitions; report malformed entries."""
    result = Discovery()
    cell_cache: dict[tuple[str, str], ArdCell | GridError] = {}
    acquisitions: dict[tuple[str, str, str], Acquisition] = {}
    date_cache: dict[str, date | str] = {}
    for obj in listing:
        key = obj.key
        if not key.startswith(layout.ARD):
            continue
        parts = key[len(layout.ARD):].split("/")
        if len(parts) < 3:
            result.problems.append(Problem(key, "expected ard/<zone>/<quadkey12>/<date>/<file>"))
            continue
        zone, quadkey = parts[0], parts[1]
        cell = cell_cache.get((zone, quadkey))
        if cell is None:
            try:
                cell = parse_cell_folder(zone, quadkey)
            except GridError as exc:
                cell = exc
            cell_cache[(zone, quadkey)] = cell
        if isinstance(cell, GridError):
            result.problems.append(Problem(key, f"bad cell folder: {cell}"))
            continue
        if len(parts) == 3:
            if parts[2] in CELL_PIPELINE_FILES:
                delivery = result.cells.setdefault(cell.id, CellDelivery(cell))
                delivery.extra_files.append(key)
            else:
                result.problems.append(Problem(key, "unexpected file directly in a cell folder"))
            continue
        if len(parts) != 4:
            result.problems.append(Problem(key, "nested too deep: expected <cell>/<date>/<file>"))
            continue
        day, name = parts[2], parts[3]
        when = date_cache.get(day)
        if when is None:
            when = date_cache[day] = _parse_day(day)
        if isinstance(when, str):
            result.problems.append(Problem(key, when))
            continue
        for suffix, asset_kind in ASSET_SUFFIXES.items():
            if name.endswith(suffix):
                catalog_id, kind = name[: -len(suffix)], asset_kind
                break
        else:
            result.problems.append(Problem(key, "unknown asset file (expected <catalog_id>-visual.tif, "
                                                "-pan.tif, -ms.tif, -data-mask.gpkg, -cloud-mask.gpkg or .json)"))
            continue
        if not catalog_id or not _CATALOG_RE.match(catalog_id):
            result.problems.append(Problem(key, f"catalog id {catalog_id!r} is empty or has odd characters"))
            continue
        acq_key = (cell.id, day, catalog_id)
        acq = acquisitions.get(acq_key)
        if acq is None:
            acq = acquisitions[acq_key] = Acquisition(cell, when, catalog_id)
        acq.assets[kind] = key
        acq.sizes[kind] = obj.size
        if acq.modified is None or obj.modified > acq.modified:
            acq.modified = obj.modified

    for (cell_id, _, _), acq in sorted(acquisitions.items()):
        if "visual" not in acq.assets:
            result.problems.append(
                Problem(f"{acq.folder}/{acq.catalog_id}-visual.tif",
                        f"acquisition {acq.catalog_id} of {cell_id} has no visual asset "
                        f"(found: {', '.join(sorted(acq.assets))}); it is skipped")
            )
            continue
        result.cells.setdefault(cell_id, CellDelivery(acq.cell)).acquisitions.append(acq)
    # A cell folder holding only pipeline outputs (no acquisition) is not a delivery.
    for cell_id in [c for c, d in result.cells.items() if not d.acquisitions]:
        del result.cells[cell_id]
    return result


def discover_bucket(bucket: Bucket, prefix: str = layout.ARD) -> Discovery:
    """Discover the delivery in ``bucket`` (optionally one zone: ``prefix='ard/33/'``)."""
    return discover(bucket.list(prefix))
