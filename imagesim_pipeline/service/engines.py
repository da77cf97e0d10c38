"""The query engine the service answers with: the pinned or served model's, swapped in place when it changes."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.registry import DEFAULT_NAME, read_pointer, served_version
from imagesim_pipeline.search.engine import SearchEngine
from imagesim_pipeline.search.stores import index_build
from imagesim_pipeline.storage import Bucket

log = logging.getLogger("imagesim.service")


class NotReadyError(ImagesimError):
    """Search asked for while the bucket has no published model or index."""


class EngineHolder:
    """The query engine of the pinned or served model (``serving.json``), re-checked every ``refresh_s`` seconds.

    A new served version, or a rebuild of the same version's index (another ``build`` in its
    manifest), is loaded beside the engine in use and swapped in once complete; while it cannot be
    loaded (a pointer or index being written, a damaged file) the engine in use keeps answering and
    ``problem`` says why.
    """

    def __init__(self, bucket: Bucket, name: str = DEFAULT_NAME, version: str = "", refresh_s: float = 60.0):
        self.bucket, self.name, self.pinned, self.refresh_s = bucket, name, version, refresh_s
        self._engine: SearchEngine | None = None
        self._problem = ""
        self.pending = ""  # a published version newer than the served one, whose index is not complete yet
        self._checked = -np.inf
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            version = self.pinned or served_version(self.bucket, self.name)
            build = index_build(self.bucket, version)
            if self._engine is None or (self._engine.version, self._engine.build) != (version, build):
                self._engine = SearchEngine(self.bucket, self.name, version)
                log.info("serving model %s/%s (index build %s): %d indexed chips", self.name, version,
                         self._engine.build or "-", len(self._engine))
            self._problem = ""
        except ImagesimError as exc:  # keep answering with the engine in use
            self._problem = str(exc)
            if self._engine is not None:
                log.warning("still serving %s/%s: %s", self.name, self._engine.version, exc)
        self.pending = self._pending()
        self._checked = time.monotonic()

    def _pending(self) -> str:
        if self.pinned:
            return ""
        try:
            latest = read_pointer(self.bucket, self.name, "latest")
        except ImagesimError:
            return ""
        served = self._engine.version if self._engine else ""
        return latest.version if latest and latest.version != served else ""

    def get(self) -> SearchEngine | None:
        """The engine in use (None before any could be loaded), re-checking the pointer when ``refresh_s`` passed."""
        with self._lock:
            if time.monotonic() - self._checked > self.refresh_s:
                self._refresh()
            return self._engine

    def require(self) -> SearchEngine:
        """The engine in use, or :class:`NotReadyError` saying why there is none."""
        engine = self.get()
        if engine is None:
            raise NotReadyError(f"search is not available yet: {self._problem}")
        return engine

    @property
    def problem(self) -> str:
        """Why the latest check could not load the pinned or served version ('' when it could)."""
        return self._problem


__all__ = ["EngineHolder", "NotReadyError"]
