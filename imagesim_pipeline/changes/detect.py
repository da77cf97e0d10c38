"""Change scores between acquisitions of the same place, from chip embeddings.

For every place (zoom-17 chip cell) seen in two or more acquisitions, each pair of consecutive
acquisitions gets a **distance**: the cosine distance ``1 - cos(e_before, e_after)`` of their
embeddings. Raw distances are not comparable across places: a field or a forest changes colour
between a summer and an autumn acquisition far more than a roof does, and one pair of
acquisitions (sun, haze, season) differs more than another. So the **score** is a robust z-score
of the distance within its group, ``(d - median) / (1.4826 * MAD)``: the group is the pair of
acquisitions (catalog ids) and the place's kind (its most probable predicted label, averaged
over both acquisitions), falling back to the pair of acquisitions alone, then to all pairs,
while a group has fewer than ``min_group`` places. A score of 3 means "three typical deviations
further apart than places of the same kind in the same pair of images".

Memory: one cell's table at a time while pairing; the result holds one row per pair.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Callable

import numpy as np
import pyarrow as pa

from imagesim_pipeline.embeddings.cell_embeddings import iter_embeddings, table_meta, vectors
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import Bucket, layout

CHANGES_PREFIX = layout.CHANGES
MIN_GROUP = 30
Progress = Callable[[str], None]


class ChangesError(ImagesimError):
    """Change detection has nothing to work on; the message says what to materialize."""


changes_key = layout.changes_key


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def pair_distances(bucket: Bucket, version: str, progress: Progress = lambda m: None,
                   warn: Progress | None = None) -> pa.Table:
    """One row per place and pair of consecutive acquisitions, with the cosine distance and the kind."""
    rows: dict[str, list] = defaultdict(list)
    labels: list[str] | None = None
    for cell, table in iter_embeddings(bucket, version, warn):
        if labels is None:
            labels = table_meta(table)["labels"]
        emb, probs = _unit(vectors(table)), vectors(table, "probs")
        places = table.column("place").to_pylist()
        dates = table.column("date").to_pylist()
        catalogs = table.column("catalog_id").to_pylist()
        chips = table.column("chip").to_pylist()
        geometry = table.column("geometry")
        by_place: dict[str, list[int]] = defaultdict(list)
        for i, place in enumerate(places):
            by_place[place].append(i)
        for place, idx in by_place.items():
            idx.sort(key=lambda i: (dates[i], catalogs[i]))
            for a, b in zip(idx, idx[1:]):
                rows["place"].append(place)
                rows["cell"].append(cell)
                rows["chip_before"].append(chips[a])
                rows["chip_after"].append(chips[b])
                rows["catalog_before"].append(catalogs[a])
                rows["catalog_after"].append(catalogs[b])
                rows["date_before"].append(dates[a])
                rows["date_after"].append(dates[b])
                rows["distance"].append(float(1.0 - emb[a] @ emb[b]))
                rows["kind"].append(labels[int(np.argmax(probs[a] + probs[b]))])
                rows["geometry"].append(geometry[b].as_py())
        progress(f"changes: {cell}: {len(rows['place'])} pairs so far")
    if labels is None:
        raise ChangesError(f"no embeddings of model {version}: materialize chip_embeddings first")
    return pa.table({
        "place": pa.array(rows["place"], pa.string()), "cell": pa.array(rows["cell"], pa.string()),
        "chip_before": pa.array(rows["chip_before"], pa.string()), "chip_after": pa.array(rows["chip_after"], pa.string()),
        "catalog_before": pa.array(rows["catalog_before"], pa.string()),
        "catalog_after": pa.array(rows["catalog_after"], pa.string()),
        "date_before": pa.array(rows["date_before"], pa.date32()), "date_after": pa.array(rows["date_after"], pa.date32()),
        "distance": pa.array(rows["distance"], pa.float64()), "kind": pa.array(rows["kind"], pa.string()),
        "geometry": pa.array(rows["geometry"], pa.binary()),
    })


def robust_scores(distance: np.ndarray, groups: list[np.ndarray], min_group: int = MIN_GROUP) -> np.ndarray:
    """Robust z-scores of ``distance`` within the finest of ``groups`` (keys per row) with ``min_group`` rows.

    ``groups`` go from finest to coarsest; rows whose group is too small at every level use all rows.
    """
    score = np.full(len(distance), np.nan)
    levels = [*groups, np.zeros(len(distance), dtype=np.int64)]  # the last level: every row together
    for level, keys in enumerate(levels):
        last = level == len(levels) - 1
        rows = np.flatnonzero(np.isnan(score))
        if not len(rows):
            break
        values, inverse, counts = np.unique(keys[rows], return_inverse=True, return_counts=True)
        for g in range(len(values)):
            if counts[g] < min_group and not last:
                continue  # too few to say what is typical: scored at a coarser level
            members = rows[inverse == g]
            d = distance[members]
            median = np.median(d)
            mad = 1.4826 * np.median(np.abs(d - median))
            score[members] = (d - median) / max(mad, 1e-6)
    return score


def change_table(bucket: Bucket, version: str, min_group: int = MIN_GROUP, progress: Progress = lambda m: None,
                 warn: Progress | None = None) -> pa.Table:
    """Every pair with its distance and normalised score, most changed first (unreadable cells named via ``warn``)."""
    table = pair_distances(bucket, version, progress, warn)
    if table.num_rows == 0:
        raise ChangesError(f"no place of model {version}'s embeddings was seen in two acquisitions")
    distance = table.column("distance").to_numpy()
    pair = np.array([f"{a}>{b}" for a, b in zip(table.column("catalog_before").to_pylist(),
                                                 table.column("catalog_after").to_pylist())], dtype=object)
    kind = np.array([f"{p}|{k}" for p, k in zip(pair, table.column("kind").to_pylist())], dtype=object)
    score = robust_scores(distance, [kind, pair], min_group)
    table = table.append_column("score", pa.array(score, pa.float64()))
    return table.take(np.argsort(-score, kind="stable"))


def write_changes(bucket: Bucket, version: str, table: pa.Table) -> str:
    """Publish the change table of ``version`` (one atomic object write); its key."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    key = changes_key(version)
    bucket.write_bytes(key, buffer.getvalue())
    return key


def read_changes(bucket: Bucket, version: str) -> pa.Table:
    """The published change table of ``version``, most changed first; :class:`ChangesError` when missing."""
    import pyarrow.parquet as pq

    key = changes_key(version)
    if not bucket.exists(key):
        raise ChangesError(f"no change scores for model {version} at {bucket.url(key)}: materialize chip_changes "
                           "(encoder_job)")
    return pq.read_table(io.BytesIO(bucket.read_bytes(key)))


__all__ = ["CHANGES_PREFIX", "ChangesError", "MIN_GROUP", "change_table", "changes_key", "pair_distances",
           "read_changes", "robust_scores", "write_changes"]
