"""Labels: OSM features to per-chip multi-label encodings, under a configurable vocabulary."""

from imagesim_pipeline.labels.cell_labels import (
    CellLabels,
    LabelError,
    coverage_key,
    csv_key,
    label_cell,
    labels_key,
    read_cell_labels,
)
from imagesim_pipeline.labels.encoding import dense, read_sparse_csv, write_sparse_csv
from imagesim_pipeline.labels.labeller import FootprintLabels, label_footprints
from imagesim_pipeline.labels.osm_geometry import OsmFeatures, osm_features
from imagesim_pipeline.labels.vocabulary import (
    Vocabulary,
    VocabularyError,
    load_vocabulary,
)

__all__ = ["CellLabels", "FootprintLabels", "LabelError", "OsmFeatures", "Vocabulary", "VocabularyError", "coverage_key",
           "csv_key", "dense", "label_cell", "label_footprints", "labels_key", "load_vocabulary", "osm_features",
           "read_cell_labels", "read_sparse_csv", "write_sparse_csv"]
