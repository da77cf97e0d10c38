"""Pictures of a change table for people: the top pairs as before | after | map, the score histogram and its figures."""

from __future__ import annotations

import io

import numpy as np

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import Bucket, StorageError


def _rgb(bucket: Bucket, chip: str) -> np.ndarray:
    from imagesim_pipeline.changes.spatial import decode_rgb
    from imagesim_pipeline.chips.naming import ChipName, chip_key

    return decode_rgb(bucket.read_bytes(chip_key(ChipName.parse(chip))))


def pairs_sheet(bucket: Bucket, rows: list[dict], thumb: int = 160) -> bytes:
    """A PNG with one line per change-table row: before | after | after with its change map (when it has
    one), captioned with rank, score, place and dates."""
    from PIL import Image, ImageDraw

    from imagesim_pipeline.changes.cell_changes import read_change_map
    from imagesim_pipeline.changes.maps import composite

    caption = 16
    sheet = Image.new("RGB", (3 * thumb + 8, max(1, len(rows)) * (thumb + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, row in enumerate(rows):
        y = n * (thumb + caption)
        try:
            before, after = _rgb(bucket, row["chip_before"]), _rgb(bucket, row["chip_after"])
        except Exception as exc:  # noqa: BLE001 - a lost chip leaves a caption, not a failed asset
            draw.text((2, y + 2), f"#{n + 1} {row['place']}: chips unreadable ({exc})", fill="red")
            continue
        parts = [before, after]
        if row.get("map"):
            try:
                parts.append(composite(after, read_change_map(bucket, row["map"], row["chip_before"],
                                                              row["chip_after"])))
            except (StorageError, ImagesimError):  # a lost map: shown as missing
                pass
        for i, part in enumerate(parts):
            image = Image.fromarray(part).resize((thumb, thumb), Image.Resampling.BILINEAR)
            sheet.paste(image, (i * (thumb + 4), y + caption))
        draw.text((2, y + 2), f"#{n + 1} score {row['score']:.1f}  {row['place']}  {row['date_before']} -> "
                              f"{row['date_after']}", fill="black")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def histogram_png(scores: np.ndarray, method: str) -> bytes:
    """The distribution of change scores (log counts), as a PNG; ``method``: the table's (what the score is)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.hist(np.clip(scores[np.isfinite(scores)], -5, 30), bins=70, color="#4477aa")
    ax.set_yscale("log")
    ax.set_xlabel("change score (mean of the map's most changed twentieth; 0 unchanged, 1 unrelated)"
                  if method == "feature-maps" else
                  "change score (embedding distance, robust z within acquisition pair and kind; clipped to -5..30)")
    ax.set_ylabel("place pairs")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def score_summary(scores: np.ndarray) -> dict[str, float]:
    """The figures behind :func:`histogram_png`: scored pairs, the median, 90th and 99th percentile and the maximum."""
    finite = np.asarray(scores, np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return {"scored": 0}
    p50, p90, p99 = np.percentile(finite, [50, 90, 99])
    return {"scored": len(finite), "median": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(finite.max())}


__all__ = ["histogram_png", "pairs_sheet", "score_summary"]
