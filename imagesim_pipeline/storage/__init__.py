"""Bucket storage: a local folder or S3, behind one interface."""

from imagesim_pipeline.storage.bucket import (
    Bucket,
    LocalBucket,
    MissingObjectError,
    ObjectInfo,
    S3Bucket,
    StorageError,
    StorageUnavailableError,
    open_bucket,
)

__all__ = ["Bucket", "LocalBucket", "MissingObjectError", "ObjectInfo", "S3Bucket", "StorageError",
           "StorageUnavailableError", "open_bucket"]
