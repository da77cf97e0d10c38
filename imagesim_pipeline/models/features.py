"""The frozen-feature fast path: backbone features computed once and cached in the bucket.

With the backbone frozen, every epoch would push the same chips through the same backbone; the
head trains on cached features instead. The cache is keyed by everything that decides the
features — dataset version, backbone, weights (content hash), input size and augmentation — and
lives at ``features/<key>/``: one ``<split>.npz`` per split (chip names, features, the chips
that could not be read) and ``manifest.json``, written last as the completion marker.

Augmentation ``d4`` caches all eight flips/rotations of every training chip (8x the encoding
time) so the head still sees augmented views; ``none`` caches one view.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from imagesim_pipeline.dataset.splits import SPLITS
from imagesim_pipeline.models.backbones import build_backbone, default_weights, pooled_features, weights_fingerprint
from imagesim_pipeline.models.datasets import ChipImages, LabelledChips, collate_skipping
from imagesim_pipeline.models.preprocess import Preprocessing
from imagesim_pipeline.storage import layout

if TYPE_CHECKING:
    from imagesim_pipeline.storage import Bucket

AUGMENTATIONS = ("none", "d4")
Progress = Callable[[str], None]


def cache_key(dataset_version: str, backbone: str, weights: str, prep: Preprocessing, augmentation: str,
              pooling: str = "avg") -> str:
    """The cache's name: the backbone and a hash of everything that decides the features."""
    spec: dict[str, Any] = {"dataset": dataset_version, "backbone": backbone, "weights": weights_fingerprint(weights),
                            "prep": prep.to_dict(), "augmentation": augmentation}
    if pooling != "avg":  # caches made before pooling was a setting keep their keys
        spec["pooling"] = pooling
    text = json.dumps(spec, sort_keys=True)
    return f"{backbone}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def d4_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The eight flips and 90° rotations of a (B, C, H, W) batch of square images."""
    rotations = [torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [torch.flip(r, dims=(-1,)) for r in rotations]


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory (no mmap for large blocks, no trimming); False where that is not glibc.

    Torch eager on the CPU frees and reallocates its large activation buffers every batch; by
    default glibc hands them back to the kernel and faults them in again page by page, which
    ``benchmarks/bench_model.py`` measured at half the full path's time. Peak memory is unchanged
    (it is bounded by the batch), it is only kept for reuse.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-4, 0) and libc.mallopt(-1, 2 ** 31 - 1))  # M_MMAP_MAX = 0, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def encoding_device() -> torch.device:
    """Where features are computed: the first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def encode_images(backbone: torch.nn.Module, images: ChipImages, batch_size: int, num_workers: int,
                  views: int = 1, progress: Progress = lambda m: None, label: str = "",
                  device: torch.device | str = "cpu", extract: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> tuple[np.ndarray, list[int]]:
    """Features (views, N, D) float32 of every readable chip, and the indices of unreadable ones.

    On a GPU the backbone runs in float32 (cached features must not depend on where they were computed
    beyond float32 rounding); decoding runs in ``num_workers`` loader processes. ``extract`` maps a batch to
    its vectors (default: ``backbone`` itself, i.e. its own pooling).
    """
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    backbone = backbone.eval().to(device)
    extract = extract or backbone
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping,
                        pin_memory=device.type == "cuda")
    n = len(images)
    out: np.ndarray | None = None
    done = np.zeros(n, bool)
    started, last = time.perf_counter(), 0.0
    for x, _, index, _ in loader:
        if len(index):
            x = x.to(device, non_blocking=True)
            batches = d4_views(x) if views == 8 else [x]
            feats = [extract(v).float().cpu().numpy() for v in batches]
            if out is None:
                out = np.zeros((views, n, feats[0].shape[1]), np.float32)
            for v, f in enumerate(feats):
                out[v, index.numpy()] = f
            done[index.numpy()] = True
        now = time.perf_counter() - started
        seen = int(done.sum())
        if now - last > 10 or seen == n:
            last = now
            progress(f"  features {label}: {seen}/{n} chips, {seen / max(now, 1e-9):.1f} chips/s")
    if out is None:
        out = np.zeros((views, n, 0), np.float32)
    return out[:, done], np.flatnonzero(~done).tolist()


def onnx_extractor(backbone: torch.nn.Module, name: str, pooling: str, size: int,
                   progress: Progress = lambda m: None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The pooled features through onnxruntime (2.5x torch eager on a CPU, ``benchmarks/bench_model.py``);
    None, with a note, where the export fails (torch computes them then)."""
    import tempfile
    from pathlib import Path

    from imagesim_pipeline.models.export import ExportError, export_features, session

    with tempfile.TemporaryDirectory(prefix="imagesim-features-") as tmp:
        try:
            path = export_features(backbone, name, pooling, Path(tmp) / "features.onnx", size)
        except ExportError as exc:
            progress(f"  onnxruntime unavailable for the feature pass ({exc}); computing with torch")
            return None
        runtime = session(path)  # loads the file: the folder can go

    def extract(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(runtime.run(["features"],
                                            {"input": np.ascontiguousarray(images.numpy(), np.float32)})[0])

    return extract


@dataclass
class FeatureCache:
    """The features of every split, as cached under ``features/<key>/``, and the cache's manifest."""

    key: str
    data: dict[str, tuple[np.ndarray, np.ndarray, list[str]]]  # split -> (features, targets, corrupt chips)
    manifest: dict[str, Any]

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(features, float labels, unreadable chips) of a split."""
        features, targets, corrupt = self.data[split]
        return torch.from_numpy(features), torch.from_numpy(targets.astype(np.float32)), corrupt


def _load(bucket: Bucket, key: str, data: LabelledChips) -> FeatureCache | None:
    from imagesim_pipeline.storage import StorageError

    try:
        manifest = json.loads(bucket.read_text(layout.features_key(key, "manifest.json")))
        loaded = {}
        for split in SPLITS:
            with np.load(io.BytesIO(bucket.read_bytes(layout.features_key(key, f"{split}.npz")))) as npz:
                chips, features = npz["chips"].tolist(), npz["features"]
            corrupt = manifest["corrupt"][split]
            part = data.splits[split]
            expected = [c for c in part.chips if c not in set(corrupt)]
            if chips != expected:
                return None  # not this dataset's chips: recompute
            keep = np.isin(part.chips, corrupt, invert=True)
            loaded[split] = (features, part.targets[keep], corrupt)
        return FeatureCache(key, loaded, manifest)
    except (StorageError, KeyError, ValueError, OSError, json.JSONDecodeError):
        return None


def cached_features(data: LabelledChips, backbone: str, weights: str | None, prep: Preprocessing,
                    augmentation: str = "none", batch_size: int = 64, num_workers: int = 0,
                    progress: Progress = lambda m: None, bucket: Bucket | None = None,
                    pooling: str = "avg") -> FeatureCache:
    """Features of every split: from the cache when it holds them, else computed and stored."""
    from imagesim_pipeline.storage import open_bucket

    weights = weights or default_weights(backbone)
    key = cache_key(data.version, backbone, weights, prep, augmentation, pooling)
    if bucket is None:
        from imagesim_pipeline.settings import bucket_uri

        bucket = open_bucket(bucket_uri() if data.version.startswith("csv:") else data.source)
    cached = _load(bucket, key, data)
    if cached is not None:
        progress(f"backbone features from the cache {bucket.url(layout.features_key(key, ''))}")
        return cached
    device = encoding_device()
    progress(f"computing backbone features ({backbone}, {prep.size} px, {pooling} pooling, augmentation "
             f"{augmentation}, on {device}) "
             f"into {bucket.url(layout.features_key(key, ''))}")
    model = build_backbone(backbone, weights).eval()
    extract = onnx_extractor(model, backbone, pooling, prep.size, progress) if device.type == "cpu" else None
    extract = extract or partial(pooled_features, model, backbone, pooling=pooling)
    reader = data.reader()
    started = time.perf_counter()
    loaded, corrupt_all, counts = {}, {}, {}
    for split in SPLITS:
        part = data.splits[split]
        views = 8 if augmentation == "d4" and split == "train" else 1
        features, bad = encode_images(model, ChipImages(part.chips, part.targets, reader, prep), batch_size,
                                      num_workers, views, progress, split, device, extract)
        corrupt = [part.chips[i] for i in bad]
        keep = np.ones(len(part.chips), bool)
        keep[bad] = False
        buffer = io.BytesIO()
        np.savez(buffer, chips=np.array([c for c, k in zip(part.chips, keep) if k]),
                 features=features if views > 1 else features[0])
        bucket.write_bytes(layout.features_key(key, f"{split}.npz"), buffer.getvalue())
        loaded[split] = (features if views > 1 else features[0], part.targets[keep], corrupt)
        corrupt_all[split] = corrupt
        counts[split] = int(keep.sum())
        for chip in corrupt[:20]:
            progress(f"  skipped unreadable chip {chip}")
    seconds = time.perf_counter() - started
    manifest = {"key": key, "dataset_version": data.version, "backbone": backbone, "weights": weights,
                "weights_sha256_12": weights_fingerprint(weights), "preprocessing": prep.to_dict(),
                "augmentation": augmentation, "pooling": pooling, "chips": counts, "corrupt": corrupt_all,
                "device": str(device),
                "seconds": round(seconds, 1), "chips_per_second": round(sum(counts.values()) / max(seconds, 1e-9), 1)}
    bucket.write_text(layout.features_key(key, "manifest.json"), json.dumps(manifest, indent=2))
    return FeatureCache(key, loaded, manifest)


__all__ = ["AUGMENTATIONS", "FeatureCache", "cache_key", "cached_features", "d4_views", "encode_images",
           "encoding_device", "keep_freed_memory", "onnx_extractor"]
