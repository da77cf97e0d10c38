"""Query arguments checked once for the CLI and the API: WGS84 bounding boxes (``west,south,east,north`` in
degrees) and the most results a query may ask for (:data:`MAX_K`).

Light on purpose (no numpy, no index): the CLI's argument parser imports it.
"""

from __future__ import annotations

from collections.abc import Iterable

from imagesim_pipeline.errors import ImagesimError

BBox = tuple[float, float, float, float]
MAX_K = 1000  # results per query


class BboxError(ImagesimError, ValueError):
    """A bounding box that is not four numbers west, south, east, north within WGS84's range; one line says why.

    A ``ValueError`` too, so a pydantic validator that raises it fails validation (a 422 in the API).
    """


def check_bbox(bbox: Iterable[float]) -> BBox:
    """``bbox`` as four floats: longitudes in -180..180, latitudes in -90..90, west <= east, south <= north.

    A box crossing the antimeridian (west > east) is refused: send the two halves as two queries.
    """
    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise BboxError(f"bbox {bbox!r} must be four numbers: west,south,east,north (degrees)") from None
    for side, value in (("west", w), ("east", e)):
        if not -180.0 <= value <= 180.0:  # also refuses NaN
            raise BboxError(f"bbox {side} {value:g} is not a longitude: longitudes are -180..180 degrees")
    for side, value in (("south", s), ("north", n)):
        if not -90.0 <= value <= 90.0:
            raise BboxError(f"bbox {side} {value:g} is not a latitude: latitudes are -90..90 degrees")
    if w > e:
        raise BboxError(f"bbox west {w:g} is east of east {e:g}: the order is west,south,east,north")
    if s > n:
        raise BboxError(f"bbox south {s:g} is north of north {n:g}: the order is west,south,east,north")
    return w, s, e, n


def parse_bbox(text: str) -> BBox:
    """``"west,south,east,north"`` (degrees) as a checked box, or :class:`BboxError`."""
    parts = text.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise BboxError(f"bbox {text!r} must be four numbers: west,south,east,north (degrees)")
    return check_bbox(values)


__all__ = ["BBox", "BboxError", "check_bbox", "parse_bbox"]
