"""Faults at the command line: each ends with one line that says what happened and what to do, never a traceback."""

from __future__ import annotations

import struct
import subprocess
from datetime import date

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from imagesim_pipeline.cli import main
from imagesim_pipeline.samples import BAHAMAS_STRIP
from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline.storage import layout, open_bucket
from imagesim_pipeline_tests.faults.conftest import BIN, CELL
from imagesim_pipeline_tests.faults.test_chip_commits import published


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_discover_and_ingest_against_a_missing_s3_bucket(s3_env, samples, capsys):
    missing = "s3://no-such-bucket-imagesim/x"
    assert main(["discover", "--bucket", missing, "--no-register"]) == 2
    assert "no-such-bucket-imagesim" in _one_line(capsys.readouterr().err)
    assert main(["ingest", str(samples["bahamas_rgb.tif"]), "--catalog-id", "B1", "--date", "2021-01-01",
                 "--bucket", missing, "--bounds=" + ",".join(map(str, BAHAMAS_STRIP))]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "NoSuchBucket" in line and "Cells written completely: none" in line


def test_materialize_without_cells_or_with_an_unknown_job(dagster_home, capsys):
    assert main(["materialize"]) == 2
    assert "run `imagesim discover`" in _one_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as info:
        main(["materialize", "--job", "nojob"])
    assert info.value.code == 2 and "invalid choice: 'nojob'" in capsys.readouterr().err


def test_materialize_a_cell_that_discover_cannot_fix(dagster_home, tmp_path, monkeypatch, capsys):
    bucket = open_bucket(tmp_path / "bucket")
    bucket.write_text("ard/35/013133111113/2023-06-15/KOTKAA.json", "{}")  # an acquisition without its COG
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "bucket"))
    assert main(["materialize", "Z35-013133111113", "Z35-013133111131"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "Z35-013133111113 has no usable acquisition" in line and "re-deliver" in line
    assert "Z35-013133111131 has no delivery" in line


def test_chip_dir_that_does_not_exist(tmp_path):
    run = subprocess.run([BIN / "python", "-m", "imagesim_pipeline.chip", "--filename", str(tmp_path / "x.json"),
                          "--chip-dir", "/missing"], capture_output=True, text=True)
    assert run.returncode == 1 and "/missing: no such chip folder" in _one_line(run.stderr)


def test_a_geotiff_whose_geokey_names_no_real_crs(tmp_path, capsys):
    path = tmp_path / "epsg32700.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32701",
                       transform=from_origin(500000, 9000000, 1, 1)) as dst:
        dst.write(np.full((3, 64, 64), 100, np.uint8))
    raw = bytearray(path.read_bytes())
    at = raw.find(struct.pack("<4H", 3072, 0, 1, 32701))  # ProjectedCSTypeGeoKey
    raw[at:at + 8] = struct.pack("<4H", 3072, 0, 1, 32700)
    path.write_bytes(raw)
    assert main(["ingest", str(path), "--catalog-id", "X1", "--date", str(date(2024, 1, 1)),
                 "--bucket", str(tmp_path / "bucket")]) == 1
    assert "cannot be related to WGS84" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "bucket").exists() or not any((tmp_path / "bucket").rglob("*.tif"))


def test_a_failing_step_is_one_line_and_the_cell_keeps_its_chips(site):
    env, _ = site
    bucket = open_bucket(env["IMAGESIM_BUCKET"])
    ok = subprocess.run([BIN / "imagesim", "materialize", CELL], env=env, cwd=PROJECT_ROOT, capture_output=True,
                        text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    before = published(bucket, CELL)
    index_key = f"nodata-index/35/{CELL}.parquet"
    index = bucket.read_bytes(index_key)
    manifest = bucket.read_bytes(layout.chip_manifest_key(CELL))
    visual = next(o.key for o in bucket.list(f"ard/35/{CELL[4:]}/") if o.key.endswith("-visual.tif"))
    raw = bucket.read_bytes(visual)
    bucket.write_bytes(visual, raw[: int(len(raw) * 0.9)])  # a truncated re-delivery
    run = subprocess.run([BIN / "imagesim", "materialize", CELL], env=env, cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 1
    assert "Traceback" not in run.stdout + run.stderr and 'File "' not in run.stdout + run.stderr
    assert "FAILED" in run.stdout and "unchanged" in run.stdout
    assert published(bucket, CELL) == before  # chips = manifest = index, byte for byte
    assert bucket.read_bytes(layout.chip_manifest_key(CELL)) == manifest and bucket.read_bytes(index_key) == index
