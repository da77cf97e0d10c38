"""OpenStreetMap per ARD cell, from a .osm.pbf extract (one pass, many cells) or the Overpass API."""

from imagesim_pipeline.osm.elements import (
           DEFAULT_MARGIN_DEG,
           CellBox,
           OsmError,
           tag_summary,
           top_keys,
)
from imagesim_pipeline.osm.overpass import OverpassClient, build_query
from imagesim_pipeline.osm.pbf import cells_in_extract, extract_cells
from imagesim_pipeline.osm.store import (
           fetch_osm_by_quadkey,
           osm_key,
           read_osm_data,
           write_osm_data,
)

__all__ = ["DEFAULT_MARGIN_DEG", "CellBox", "OsmError", "OverpassClient", "build_query", "cells_in_extract",
           "extract_cells", "fetch_osm_by_quadkey", "osm_key", "read_osm_data", "tag_summary", "top_keys",
           "write_osm_data"]
