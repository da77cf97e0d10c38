"""Dataset statistics computed out of core: Parquet record batches, never the whole table.

Label frequencies per split, label co-occurrence, chips per zone and split, labels per chip,
and coverage histograms (area share of polygon labels, metres of line labels, over the chips
that carry them). ``stats_plots`` draws them as PNGs for the asset metadata and the CLI.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesim_pipeline.dataset.build import read_manifest
from imagesim_pipeline.dataset.splits import SPLITS
from imagesim_pipeline.labels.encoding import dense_from_arrow
from imagesim_pipeline.storage import Bucket, layout

AREA_BINS = np.linspace(0.0, 1.0, 11)
LENGTH_BINS = np.array([0, 20, 50, 100, 150, 200, 300, 500, 1000, np.inf])
BATCH_ROWS = 65_536


def dataset_stats(bucket: Bucket, version: str | None = None, batch_rows: int = BATCH_ROWS) -> dict[str, Any]:
    """Statistics of a dataset version (default: the latest), streamed from its ``chips.parquet``."""
    manifest = read_manifest(bucket, version)
    version = manifest.version
    names = manifest.vocabulary.names
    kinds = [label.geometry for label in manifest.vocabulary.labels]
    n = len(names)
    freq = {s: np.zeros(n, dtype=np.int64) for s in SPLITS}
    chips = dict.fromkeys(SPLITS, 0)
    co = np.zeros((n, n), dtype=np.int64)
    per_chip = np.zeros(n + 1, dtype=np.int64)
    zones: dict[str, dict[str, int]] = {}
    area_hist = np.zeros((n, len(AREA_BINS) - 1), dtype=np.int64)
    length_hist = np.zeros((n, len(LENGTH_BINS) - 1), dtype=np.int64)
    with bucket.local_copy(layout.dataset_key(version, "chips.parquet")) as path:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_rows,
                                          columns=["zone", "split", "label_ids", "area_share", "length_m"]):
            matrix = dense_from_arrow(batch.column("label_ids"), n).astype(np.int64)
            split = batch.column("split").to_numpy(zero_copy_only=False)
            for s in SPLITS:
                rows = split == s
                chips[s] += int(rows.sum())
                freq[s] += matrix[rows].sum(axis=0)
            co += matrix.T @ matrix
            per_chip += np.bincount(matrix.sum(axis=1), minlength=n + 1)[: n + 1]
            per_zone = pa.table({"zone": batch.column("zone"), "split": batch.column("split")}) \
                .group_by(["zone", "split"]).aggregate([([], "count_all")])
            for z, s, chips_here in zip(*(per_zone.column(c).to_pylist() for c in ("zone", "split", "count_all")),
                                        strict=True):
                zones.setdefault(f"{z:02d}", dict.fromkeys(SPLITS, 0))[s] += chips_here
            ids = pc.list_flatten(batch.column("label_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
            area = pc.list_flatten(batch.column("area_share")).to_numpy(zero_copy_only=False)
            length = pc.list_flatten(batch.column("length_m")).to_numpy(zero_copy_only=False)
            for label in range(n):
                mine = ids == label
                if "polygon" in kinds[label]:
                    area_hist[label] += np.histogram(area[mine & (area > 0)], AREA_BINS)[0]
                if "line" in kinds[label]:
                    length_hist[label] += np.histogram(length[mine & (length > 0)], LENGTH_BINS)[0]
    return {
        "version": version,
        "labels": names,
        "chips_by_split": chips,
        "label_counts": {s: dict(zip(names, freq[s].tolist(), strict=True)) for s in SPLITS},
        "cooccurrence": co.tolist(),
        "labels_per_chip": per_chip.tolist(),
        "chips_by_zone": dict(sorted(zones.items())),
        "area_share_histogram": {"bins": AREA_BINS.tolist(),
                                 "counts": {names[i]: area_hist[i].tolist()
                                            for i in range(n) if "polygon" in kinds[i]}},
        "length_m_histogram": {"bins": [float(b) for b in LENGTH_BINS[:-1]] + ["inf"],
                               "counts": {names[i]: length_hist[i].tolist() for i in range(n) if "line" in kinds[i]}},
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text report of ``dataset_stats``."""
    names = stats["labels"]
    width = max(len(n) for n in names)
    total = {s: max(1, stats["chips_by_split"][s]) for s in SPLITS}
    lines = [f"dataset {stats['version']}: "
             + ", ".join(f"{s} {stats['chips_by_split'][s]}" for s in SPLITS) + " chips",
             "", f"{'label':<{width}}  " + "  ".join(f"{s:>13}" for s in SPLITS)]
    for name in names:
        cells = [f"{stats['label_counts'][s][name]:>6} {100 * stats['label_counts'][s][name] / total[s]:5.1f}%"
                 for s in SPLITS]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    lines += ["", "chips per zone: " + ", ".join(f"{z}: {sum(c.values())}" for z, c in stats["chips_by_zone"].items()),
              "labels per chip: " + ", ".join(f"{k}: {v}" for k, v in enumerate(stats["labels_per_chip"]) if v)]
    co = np.asarray(stats["cooccurrence"], dtype=float)
    pairs = [(co[i, j], names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names)) if co[i, j]]
    lines.append("most frequent pairs: "
                 + ", ".join(f"{a}+{b} {int(c)}" for c, a, b in sorted(pairs, reverse=True)[:8]))
    return "\n".join(lines)


def stats_plots(stats: dict[str, Any]) -> dict[str, bytes]:
    """PNG plots: label frequency per split, co-occurrence, coverage histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = stats["labels"]
    plots: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=80)
    y = np.arange(len(names))
    for k, s in enumerate(SPLITS):
        share = np.array([stats["label_counts"][s][n] for n in names]) / max(1, stats["chips_by_split"][s])
        ax.barh(y + (k - 1) * 0.27, share, height=0.27, label=f"{s} ({stats['chips_by_split'][s]})")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("share of chips carrying the label")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Label frequency by split")
    plots["label_frequency"] = _png(fig)

    co = np.asarray(stats["cooccurrence"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        conditional = np.nan_to_num(co / np.diag(co)[:, None])
    fig, ax = plt.subplots(figsize=(6, 5.2), dpi=80)
    image = ax.imshow(conditional, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("P(column label | row label)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    plots["cooccurrence"] = _png(fig)

    area = stats["area_share_histogram"]["counts"]
    if area:
        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=80)
        centres = (AREA_BINS[:-1] + AREA_BINS[1:]) / 2
        colours = plt.get_cmap("tab20")  # one colour per label (the default cycle repeats after 10)
        for j, (name, counts) in enumerate(area.items()):
            if sum(counts):
                ax.plot(centres, counts, marker="o", label=name, color=colours(j % 20))
        ax.set_xlabel("area share of the chip")
        ax.set_ylabel("chips")
        ax.set_yscale("symlog")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("Coverage of polygon labels (chips carrying them)")
        plots["coverage"] = _png(fig)
    return plots


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


__all__ = ["dataset_stats", "format_stats", "stats_plots"]
