"""The change table: how much each place changed between consecutive acquisitions.

For every place (zoom-17 chip cell) seen in two or more acquisitions, each pair of consecutive
acquisitions gets:

* ``change``: the **spatial change score** of the two chips
  (:class:`imagesim_pipeline.changes.spatial.ChipPairScorer`: the published model's feature maps
  compared location by location, the mean of the map's most changed twentieth), and its **change
  map**, kept in its cell's change file ``changes/<model version>/cells/<zone>/<cell>.parquet``
  (the row's ``map`` column holds that key; :func:`imagesim_pipeline.changes.cell_changes.read_change_map`
  reads one);
* ``distance``: the cosine distance ``1 - cos(e_before, e_after)`` of the two chip embeddings (what
  search compares; one vector per chip, so a new building on 5 % of a place barely moves it).

The ``method`` column says what the **score** is. ``feature-maps``: the change score itself. It
is already made comparable across places and acquisitions where it is computed (feature maps
centred per image, colours standardised per image, misregistration forgiven), and normalising
it again per pair of acquisitions and kind made it worse on the tuning world (see
``benchmarks/bench_changes.py``). ``embedding``, for a model exported before its feature maps
were part of ``model.onnx`` (no maps then): a robust z-score of the distance within its group,
``(x - median) / (1.4826 * MAD)``, the group being the pair of acquisitions (catalog ids) and the
place's kind (its most probable predicted label, averaged over both acquisitions), falling back
to the pair of acquisitions alone, then to all pairs, while a group has fewer than ``min_group``
places: raw embedding distances are not comparable across places (a field changes colour between
summer and autumn far more than a roof does).

The encoder scores the pairs as it encodes (:mod:`imagesim_pipeline.changes.cell_changes`); pairs
it did not score (cells encoded before, a run stopped between its two writes) are scored here.

Memory: one cell's embeddings and change file, and at most one batch of chip images, at a time;
the result holds one row per pair.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from imagesim_pipeline.embeddings.cell_embeddings import iter_embeddings, table_meta, vectors
from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import Bucket, StorageError, layout

if TYPE_CHECKING:  # the scorer brings onnxruntime: reading the table (CLI, service) needs none of it
    from imagesim_pipeline.changes.spatial import ChipPairScorer, PairChange

MIN_GROUP = 30
FEATURE_MAPS, EMBEDDING = "feature-maps", "embedding"  # the method column: what the score is
Progress = Callable[[str], None]


class ChangesError(ImagesimError):
    """Change detection has nothing to work on; the message says what to materialize."""


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def pair_distances(bucket: Bucket, version: str, progress: Progress = lambda m: None,
                   warn: Progress | None = None, scorer: ChipPairScorer | None = None) -> pa.Table:
    """One row per place and pair of consecutive acquisitions, with the embedding distance, the kind
    and, with a ``scorer``, the spatial change score and the key of the cell file holding its map."""
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
        sizes = table.column("chip_bytes").to_pylist()
        geometry = table.column("geometry")
        first = len(rows["place"])
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
                rows["key"].append((chips[a], chips[b], sizes[a], sizes[b]))
        if scorer is not None:
            _cell_changes(bucket, scorer, version, cell, rows, first, warn or progress)
        progress(f"changes: {cell}: {len(rows['place'])} pairs so far")
    if labels is None:
        raise ChangesError(f"no embeddings of model {version}: materialize chip_embeddings first")
    return pa.table({
        "place": pa.array(rows["place"], pa.string()), "cell": pa.array(rows["cell"], pa.string()),
        "chip_before": pa.array(rows["chip_before"], pa.string()),
        "chip_after": pa.array(rows["chip_after"], pa.string()),
        "catalog_before": pa.array(rows["catalog_before"], pa.string()),
        "catalog_after": pa.array(rows["catalog_after"], pa.string()),
        "date_before": pa.array(rows["date_before"], pa.date32()),
        "date_after": pa.array(rows["date_after"], pa.date32()),
        "distance": pa.array(rows["distance"], pa.float64()), "kind": pa.array(rows["kind"], pa.string()),
        "geometry": pa.array(rows["geometry"], pa.binary()),
        "change": pa.array(rows["change"] if scorer else [None] * len(rows["place"]), pa.float64()),
        "map": pa.array(rows["map"] if scorer else [""] * len(rows["place"]), pa.string()),
    })


def _cell_changes(bucket: Bucket, scorer: ChipPairScorer, version: str, cell: str, rows: dict[str, list], first: int,
                  warn: Progress) -> None:
    """Fill ``change`` and ``map`` of one cell's pairs (``rows[...][first:]``): from the cell's change file
    that the encoder wrote (:mod:`imagesim_pipeline.changes.cell_changes`); pairs it lacks are scored here
    from their chips and the file is written again with them."""
    from imagesim_pipeline.changes.cell_changes import pair_row, read_cell_changes, write_cell_changes

    known = read_cell_changes(bucket, version, cell, scorer=scorer.params.fingerprint, warn=warn)
    key = layout.cell_changes_key(version, cell)
    missing = [i for i in range(first, len(rows["place"])) if rows["key"][i] not in known]
    if missing:
        for i, scored in zip(missing, score_pairs(bucket, scorer, rows, missing, warn)):
            if scored is not None:
                known[rows["key"][i]] = pair_row(rows["place"][i], rows["key"][i], scored.score, scored.change,
                                                 scorer.params.fingerprint)
        current = set(rows["key"][first:])  # pairs of chips no longer there are dropped
        write_cell_changes(bucket, version, cell, [row for k, row in known.items() if k in current])
    for i in range(first, len(rows["place"])):
        row = known.get(rows["key"][i])
        rows["change"].append(row["change"] if row else float("nan"))
        rows["map"].append(key if row else "")


def score_pairs(bucket: Bucket, scorer: ChipPairScorer, rows: dict[str, list], which: list[int],
                warn: Progress, batch: int = 64) -> list[PairChange | None]:
    """The pairs ``which`` of ``rows`` scored from their chips; None for a pair whose chip cannot be read
    (``warn`` names it; its change stays NaN and sorts last)."""
    from imagesim_pipeline.changes.spatial import UnreadablePairError, decode_rgb
    from imagesim_pipeline.chips.naming import ChipName, chip_key

    out: list[PairChange | None] = []
    for start in range(0, len(which), batch):
        todo, images = [], []
        for i in which[start:start + batch]:
            try:
                before, after = (chip_key(ChipName.parse(rows[f"chip_{side}"][i])) for side in ("before", "after"))
                pair = (decode_rgb(bucket.read_bytes(before)), decode_rgb(bucket.read_bytes(after)))
            except (UnreadablePairError, StorageError) as exc:
                warn(f"change of {rows['place'][i]} ({rows['chip_before'][i]} -> {rows['chip_after'][i]}) "
                     f"not scored: a chip is unreadable ({exc}); re-materialize chips for {rows['cell'][i]}")
                continue
            todo.append(i)
            images.append(pair)
        scored = dict(zip(todo, scorer.score_images(images)))
        out += [scored.get(i) for i in which[start:start + batch]]
    return out


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
            if not np.isfinite(d).any():
                continue  # nothing measured here (unreadable pairs): left NaN
            median = np.median(d)
            mad = 1.4826 * np.median(np.abs(d - median))
            score[members] = (d - median) / max(mad, 1e-6)
    return score


def change_table(bucket: Bucket, version: str, min_group: int = MIN_GROUP, progress: Progress = lambda m: None,
                 warn: Progress | None = None, scorer: ChipPairScorer | None = None) -> pa.Table:
    """Every pair with its measures and score, most changed first (unreadable cells named via ``warn``).
    With a ``scorer`` the score is the spatial change (pairs missing from the cells' files are scored
    and written); without, the robust z-score of the embedding distance (``method`` says which)."""
    table = pair_distances(bucket, version, progress, warn, scorer)
    if table.num_rows == 0:
        raise ChangesError(f"no place of model {version}'s embeddings was seen in two acquisitions")
    distance = table.column("distance").to_numpy()
    pair = np.array([f"{a}>{b}" for a, b in zip(table.column("catalog_before").to_pylist(),
                                                 table.column("catalog_after").to_pylist())], dtype=object)
    kind = np.array([f"{p}|{k}" for p, k in zip(pair, table.column("kind").to_pylist())], dtype=object)
    if scorer is not None:  # already comparable across places and pairs (see the module doc)
        score = np.asarray(table.column("change").to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        score = robust_scores(distance, [kind, pair], min_group)
    table = table.append_column("score", pa.array(score, pa.float64()))
    table = table.append_column("method", pa.array([FEATURE_MAPS if scorer is not None else EMBEDDING]
                                                   * table.num_rows, pa.string()))
    return table.take(np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable"))


def write_changes(bucket: Bucket, version: str, table: pa.Table) -> str:
    """Publish the change table of ``version`` (one atomic object write); its key."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    key = layout.changes_key(version)
    bucket.write_bytes(key, buffer.getvalue())
    return key


def read_changes(bucket: Bucket, version: str) -> pa.Table:
    """The published change table of ``version``, most changed first; :class:`ChangesError` when missing."""
    import pyarrow.parquet as pq

    key = layout.changes_key(version)
    if not bucket.exists(key):
        raise ChangesError(f"no change scores for model {version} at {bucket.url(key)}: materialize chip_changes "
                           "(encoder_job)")
    return pq.read_table(io.BytesIO(bucket.read_bytes(key)))


__all__ = ["ChangesError", "EMBEDDING", "FEATURE_MAPS", "MIN_GROUP", "change_table", "pair_distances",
           "read_changes", "robust_scores", "score_pairs", "write_changes"]
