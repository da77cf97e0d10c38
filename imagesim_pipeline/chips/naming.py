"""Chip names: ``Z<zone>-<quadkey at chip zoom>_<catalog id>.jpg``, and what they point at."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imagesim_pipeline.ard.grid import TILE_ZOOM, ArdCell, GridError
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import layout

MIN_ZOOM, MAX_ZOOM = 13, 19
# The first '_' ends the quadkey; catalog ids may hold '_' and '.' themselves.
_NAME_RE = re.compile(r"^(?P<cell>Z\d{2}-[0-3]+)_(?P<catalog>[A-Za-z0-9_.]+)\.jpg$")


class ChipNameError(ImagesimError, ValueError):
    """A chip file name that is not ``Z<zone>-<quadkey>_<catalog id>.jpg``."""

    pass


@dataclass(frozen=True)
class ChipName:
    """A chip: its grid cell (at the chip zoom) and the catalog id of its acquisition."""

    cell: ArdCell
    catalog_id: str

    @classmethod
    def parse(cls, name: str) -> ChipName:
        """The chip named ``name`` (with or without ``.jpg``); :class:`ChipNameError` otherwise."""
        match = _NAME_RE.match(Path(name).name)
        if not match:
            raise ChipNameError(f"{name!r} is not a chip name (Z<zone>-<quadkey>_<catalog id>.jpg)")
        try:
            cell = ArdCell.parse(match["cell"])
        except GridError as exc:
            raise ChipNameError(f"{name!r}: {exc}") from None
        if cell.zoom <= TILE_ZOOM:
            raise ChipNameError(f"{name!r}: a chip's quadkey is finer than zoom {TILE_ZOOM}")
        return cls(cell, match["catalog"])

    @property
    def name(self) -> str:
        """The file name, ``Z<zone>-<quadkey>_<catalog id>.jpg``."""
        return f"{self.cell.id}_{self.catalog_id}.jpg"

    @property
    def tile(self) -> ArdCell:
        """The level-12 delivery cell the chip was cut from."""
        return self.cell.ancestor(TILE_ZOOM)

    @property
    def geometry(self):
        """The chip's footprint in its UTM CRS (``cell.epsg``)."""
        return self.cell.geometry

    @property
    def wgs84_geometry(self):
        """The chip's footprint in WGS84."""
        return self.cell.wgs84_geometry


def chip_key(name: ChipName) -> str:
    """The chip's key in the bucket: ``chips/<zone>/<name>``."""
    return layout.chip_key(name.name)


def get_cog_path_from_chip(chip_name: str, ard_root: str | Path) -> Path:
    """The ``-visual.tif`` a chip was cut from, under a local ARD folder.

    ``ard_root`` is the ``ard`` folder (holding zone folders) or one zone's folder.
    """
    chip = ChipName.parse(chip_name)
    root = Path(ard_root)
    zone_dir = root if root.name in (f"{chip.cell.zone:02d}", str(chip.cell.zone)) else root / f"{chip.cell.zone:02d}"
    matches = sorted((zone_dir / chip.tile.quadkey).glob(f"*/{chip.catalog_id}-visual.tif"))
    if not matches:
        raise FileNotFoundError(f"no {chip.catalog_id}-visual.tif for {chip.tile.id} under {zone_dir}")
    return matches[0]
