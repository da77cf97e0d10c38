"""The base of imagesim's own errors. Every stage's error class derives from ``ImagesimError``; the
Dagster assets catch it once (``orchestration/failures.py``) and fail with its message."""


class ImagesimError(RuntimeError):
    """An error whose message names the file, cell or setting at fault and says what to do."""


class TransientError(ImagesimError):
    """A failure that may pass by itself (an S3 endpoint or the Overpass API not answering): the
    step is retried by its retry policy; every other ``ImagesimError`` fails at once."""
