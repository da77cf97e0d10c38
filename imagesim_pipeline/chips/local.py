"""Chip a local ARD folder into a local chip folder (the reference's ``chip.py --ard-path``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from imagesim_pipeline.ard.discovery import Problem, discover
from imagesim_pipeline.chips.chipper import ChipJob, chip_acquisition, classify
from imagesim_pipeline.storage import LocalBucket, ObjectInfo


def local_listing(ard_path: Path) -> tuple[list[ObjectInfo], dict[str, Path]]:
    """Files under an ARD folder (``ard/``, or one zone's folder) keyed as ``ard/<zone>/...``."""
    listing, paths = [], {}
    when = datetime.now(UTC)
    for path in sorted(ard_path.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(ard_path).parts
        parts = (ard_path.name, *rel) if ard_path.name.isdigit() else rel
        key = "ard/" + "/".join(parts)
        listing.append(ObjectInfo(key, path.stat().st_size, when))
        paths[key] = path
    return listing, paths


def chip_ard_folder(ard_path: str | os.PathLike[str], dest: str | os.PathLike[str], *, zoom: int = 17,
                    processes: int = 1, quality: int = 90, size: int | None = None, write_empty: bool = False,
                    progress: Callable[[str], None] = print) -> tuple[dict[str, str], list[Problem]]:
    """Chip every acquisition under ``ard_path`` into ``dest``; returns (chip -> class, problems)."""
    root = Path(ard_path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such ARD folder")
    listing, paths = local_listing(root)
    found = discover(listing)
    out = LocalBucket(dest)
    index: dict[str, str] = {}
    acquisitions = [a for d in found.cells.values() for a in d.acquisitions]
    for i, acq in enumerate(sorted(acquisitions, key=lambda a: (a.cell.id, a.date, a.catalog_id)), 1):
        job = ChipJob(str(paths[acq.visual_key]), acq.cell, acq.catalog_id, zoom, quality, size, write_empty)
        label = f"[{i}/{len(acquisitions)}] {acq.cell.id} {acq.catalog_id}"

        def report(done: int, total: int, label: str = label) -> None:
            if done == total or done % max(1, total // 4) == 0:
                progress(f"{label}: chip row {done}/{total}")

        for chip in chip_acquisition(job, processes, report):
            if chip.jpeg is not None:
                out.write_bytes(chip.name, chip.jpeg)
                index[chip.name] = classify(chip.valid_fraction)
    return index, found.problems
