"""Whether a freshly written index may serve search: the ``finds_itself`` check and the ``serving.json`` move.

A model version's index serves search once at least ``FINDS_ITSELF_MIN`` of a sample of its chips,
queried with their own stored embedding, come back first: a wrong index (vectors and items out of
order, a broken build) fails it. Passing moves ``models/<name>/serving.json`` to the version, the
second phase of a promotion (``latest.json`` moved when the model was published).
"""

from __future__ import annotations

from dataclasses import dataclass

from imagesim_pipeline.models.registry import read_pointer, set_pointer
from imagesim_pipeline.search.engine import SearchEngine
from imagesim_pipeline.storage import Bucket

FINDS_ITSELF_MIN = 0.95
SAMPLE = 100


@dataclass(frozen=True)
class FindsItself:
    """The check's outcome: chips sampled and the share whose first hit was the chip itself."""

    sampled: int
    first_is_itself: float

    @property
    def passed(self) -> bool:
        """Whether the share reaches ``FINDS_ITSELF_MIN``."""
        return self.first_is_itself >= FINDS_ITSELF_MIN


@dataclass(frozen=True)
class Serving:
    """The ``serving.json`` pointer after :func:`serve_if_sound`: what it names and whether it moved."""

    version: str  # "none" when no version serves yet
    previous: str | None
    moved: bool


def finds_itself(engine: SearchEngine, n: int = SAMPLE) -> FindsItself:
    """Query ``n`` sampled chips of ``engine``'s index with their own embedding."""
    sampled, share = engine.finds_itself(n)
    return FindsItself(sampled, share)


def serve_if_sound(bucket: Bucket, name: str, version: str, check: FindsItself) -> Serving:
    """Point ``serving.json`` of model ``name`` at ``version`` when ``check`` passed and it names another."""
    pointer = read_pointer(bucket, name, "serving")
    previous = pointer.version if pointer else None
    if check.passed and previous != version:
        set_pointer(bucket, name, "serving", version)
        return Serving(version, previous, True)
    return Serving(previous or "none", previous, False)


__all__ = ["FINDS_ITSELF_MIN", "FindsItself", "Serving", "finds_itself", "serve_if_sound"]
