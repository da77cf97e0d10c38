"""Change detection: how much each place changed between its acquisitions, from the chip embeddings
(``detect``), and between two co-registered images, from their feature maps (``scorer``)."""

from imagesim_pipeline.lazy import lazy_exports

# Names load on first use: the change table (detect) needs no torch, the pixel-pair scorer loads it for its model.
__getattr__, __all__ = lazy_exports(__name__, {
    "scorer": ["FeatureExtractor", "ScorerParams", "change_map", "score_pair"],
})
