"""Chips: ARD tiles cut on the ARD grid into JPEGs, and the nodata index."""

from imagesim_pipeline.chips.cell_chips import (
    CellChips,
    chip_cell,
    manifest_key,
    read_manifest,
)
from imagesim_pipeline.chips.chipper import (
    ALL_DATA,
    NO_DATA,
    PARTIAL,
    Chip,
    ChipError,
    ChipJob,
    chip_acquisition,
)
from imagesim_pipeline.chips.naming import (
    ChipName,
    ChipNameError,
    chip_key,
    get_cog_path_from_chip,
)
from imagesim_pipeline.chips.nodata_index import (
    classify_chip_folder,
    classify_jpeg,
    rebuild_index_json,
    write_cell_index,
)

__all__ = ["ALL_DATA", "NO_DATA", "PARTIAL", "CellChips", "Chip", "ChipError", "ChipJob", "ChipName",
           "ChipNameError", "chip_acquisition", "chip_cell", "chip_key", "classify_chip_folder", "classify_jpeg",
           "get_cog_path_from_chip", "manifest_key", "read_manifest", "rebuild_index_json", "write_cell_index"]
