"""Labels: OSM features to per-chip multi-label encodings, under a configurable vocabulary.

Names load on first use (``imagesim_pipeline.lazy``): reading label CSVs needs no GDAL/rasterio.
"""

from imagesim_pipeline.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "cell_labels": ["CellLabels", "LabelError", "coverage_key", "csv_key", "label_cell", "labels_key",
                    "read_cell_labels"],
    "encoding": ["dense", "read_sparse_csv", "write_sparse_csv"],
    "labeller": ["FootprintLabels", "label_footprints"],
    "osm_geometry": ["OsmFeatures", "osm_features"],
    "vocabulary": ["Vocabulary", "VocabularyError", "load_vocabulary"],
})
