"""Benchmark: chip one full-size ARD tile (16384 x 16384 RGB COG, JPEG/YCbCr like ARD's) at zoom 17.

1024 chips of 512 px. Measured in the same run, each in its own process (peak RSS is its own):

* imagesim: ``chip_acquisition`` with 1 and 2 processes;
* floor: decoding the same pixels (chip-row strips) plus encoding the same JPEGs, nothing else;
* naive: a window read per chip plus Pillow's JPEG save (on a sample of chip rows);
* the folder classifier (reduced-size decodes) against full-size decoding of the same chips.

Usage: python benchmarks/bench_chips.py [--size 16384] [--naive-rows 4]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import simplejpeg
from _measure import measure
from rasterio.transform import from_origin
from rasterio.windows import Window

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.chips.chipper import ChipJob, chip_acquisition
from imagesim_pipeline.chips.nodata_index import classify_jpeg

CELL = ArdCell.parse("Z33-120020223133")
QUALITY = 90


def make_tile(path: Path, size: int) -> None:
    """A textured RGB tile on CELL's grid, written strip by strip, then made a JPEG COG."""
    rng = np.random.default_rng(0)
    xmin, _, _, ymax = CELL.bounds
    res = CELL.size / size
    tmp = path.with_suffix(".tmp.tif")
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": f"EPSG:{CELL.epsg}", "transform": from_origin(xmin, ymax, res, res), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "nodata": 0}
    yy, xx = np.mgrid[0:512, 0:size]
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, size, 512):
            base = (np.sin((xx + row) / 97.0) * 40 + np.cos((yy + row) / 53.0) * 30 + 120).astype(np.int16)
            noise = rng.integers(-25, 25, size=(3, 512, size), dtype=np.int16)
            strip = np.clip(base[None] + noise + np.array([10, 0, -15])[:, None, None], 1, 255).astype(np.uint8)
            dst.write(strip, window=Window(0, row, size, 512))
    rasterio.shutil.copy(tmp, path, driver="COG", COMPRESS="JPEG", QUALITY="90", BLOCKSIZE="512",
                         OVERVIEWS="AUTO", NUM_THREADS="ALL_CPUS")
    tmp.unlink()


def _make(path: str, size: int) -> int:
    make_tile(Path(path), size)
    return 0


def _imagesim(path: str, processes: int) -> int:
    job = ChipJob(path, CELL, "BENCH", zoom=17, quality=QUALITY)
    return sum(1 for _ in chip_acquisition(job, processes))


def _floor(path: str) -> int:
    n = 32
    with rasterio.open(path) as src:
        px = src.width // n
        for row in range(n):
            strip = src.read(window=Window(0, row * px, n * px, px))
            for col in range(n):
                tile = np.ascontiguousarray(np.moveaxis(strip[:, :, col * px:(col + 1) * px], 0, -1))
                simplejpeg.encode_jpeg(tile, quality=QUALITY, colorsubsampling="420")
    return n * n


def _naive(path: str, rows: int) -> int:
    from PIL import Image

    n = 32
    with rasterio.open(path) as src:
        px = src.width // n
        for row in range(rows):
            for col in range(n):
                data = src.read(window=Window(col * px, row * px, px, px))
                buf = io.BytesIO()
                Image.fromarray(np.moveaxis(data, 0, -1)).save(buf, "JPEG", quality=QUALITY)
    return rows * n


def _classify(folder: str, full: bool) -> int:
    files = sorted(Path(folder).glob("*.jpg"))
    for f in files:
        data = f.read_bytes()
        if full:
            simplejpeg.decode_jpeg(data)
        else:
            classify_jpeg(data)
    return len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="tile size in px (16384 = ARD)")
    parser.add_argument("--naive-rows", type=int, default=4, help="chip rows measured the naive way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tile = Path(tmp) / "BENCH-visual.tif"
        started = time.perf_counter()
        measure(_make, str(tile), args.size)  # in a child, so this process stays small
        print(f"tile: {args.size}x{args.size} RGB JPEG COG, {tile.stat().st_size / 1e6:.0f} MB "
              f"(made in {time.perf_counter() - started:.0f} s); 1024 chips of {args.size // 32} px at zoom 17")
        floor_t, chips, floor_rss = measure(_floor, str(tile))
        results = {}
        for processes in (1, 2):
            results[processes] = measure(_imagesim, str(tile), processes)
        naive_t, naive_chips, naive_rss = measure(_naive, str(tile), args.naive_rows)
        naive_rate = naive_chips / naive_t
        print(f"floor (strip decode + simplejpeg encode): {chips / floor_t:6.1f} chips/s  peak RSS {floor_rss:.0f} MB")
        for processes, (t, count, rss) in results.items():
            print(f"imagesim, {processes} process(es):              {count / t:6.1f} chips/s  peak RSS {rss:.0f} MB/process  "
                  f"time/floor {t / floor_t:.2f}x  speed-up over naive {count / t / naive_rate:.1f}x")
        print(f"naive (window read + Pillow save per chip): {naive_rate:6.1f} chips/s  peak RSS {naive_rss:.0f} MB "
              f"({naive_chips} chips sampled)")
        # The folder classifier, on the chips written as files.
        folder = Path(tmp) / "chips"
        folder.mkdir()
        for chip in chip_acquisition(ChipJob(str(tile), CELL, "BENCH", quality=QUALITY), 2):
            (folder / chip.name).write_bytes(chip.jpeg)
        cls_t, count, _ = measure(_classify, str(folder), False)
        full_t, _, _ = measure(_classify, str(folder), True)
        print(f"folder classifier (1/4-scale decode + classes): {count / cls_t:6.1f} chips/s; "
              f"full-size decode alone: {count / full_t:6.1f} chips/s (classifier/full-decode speed {full_t / cls_t:.2f}x)")


if __name__ == "__main__":
    main()
