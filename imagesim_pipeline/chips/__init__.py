"""Chips: ARD tiles cut on the ARD grid into JPEGs, and the nodata index.

Names load on first use (``imagesim_pipeline.lazy``): reading chip names needs no GDAL/rasterio.
"""

from imagesim_pipeline.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "cell_chips": ["CellChips", "chip_cell", "read_manifest"],
    "chipper": ["ALL_DATA", "NO_DATA", "PARTIAL", "Chip", "ChipError", "ChipJob", "chip_acquisition"],
    "naming": ["ChipName", "ChipNameError", "chip_key", "get_cog_path_from_chip"],
    "nodata_index": ["classify_chip_folder", "classify_jpeg", "rebuild_index_json", "write_cell_index"],
})
