"""Light commands stay light: `imagesim search --chip`, `changes` and `model report` never import torch.

Each check runs in a fresh interpreter (this one has long imported everything) and asserts on which
modules got imported, never on timings: torch, torchvision, lightning, onnxruntime and rasterio are
only for encoding images, training and chipping.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "lightning", "onnxruntime", "rasterio")

# Everything these commands import when the bucket has an index, a change table and a model: an empty
# bucket stops them early, so the modules are imported too.
LIGHT_MODULES = (
    "imagesim_pipeline.search.engine",
    "imagesim_pipeline.search.catalog",
    "imagesim_pipeline.service.uploads",
    "imagesim_pipeline.changes.detect",
    "imagesim_pipeline.embeddings.cell_embeddings",
    "imagesim_pipeline.models.registry",
    "imagesim_pipeline.models.report",
    "imagesim_pipeline.storage",
)

SCRIPT = """
import importlib, json, sys
from imagesim_pipeline.cli import main
try:
    rc = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    rc = exc.code
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
print(json.dumps({"rc": rc, "loaded": sorted(m for m in json.loads(sys.argv[3]) if m in sys.modules),
                  "engine": "imagesim_pipeline.search.engine" in sys.modules}))
"""


def run_main(argv: list[str], modules: tuple[str, ...] = ()) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(argv), json.dumps(modules), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


@pytest.mark.parametrize("argv", [
    ["search", "--chip", "Z35-01313111111312103_KOTKAB.jpg"],
    ["search", "--positive", "Z35-01313111111312103_KOTKAB.jpg", "--negative", "Z35-01313111111312102_KOTKAB.jpg",
     "--bbox", "26.9,60.4,27.0,60.5", "--label", "water", "--spread"],
    ["changes", "--bbox", "26.9,60.4,27.0,60.5"],
    ["model", "report"],
], ids=["search-chip", "search-examples", "changes", "model-report"])
def test_light_commands_never_import_torch(argv, tmp_path):
    result = run_main([*argv, "--bucket", str(tmp_path)], LIGHT_MODULES)
    assert result["rc"] == 2  # an empty bucket: one line saying what to run
    assert result["loaded"] == [], f"imagesim {argv[0]} imports {result['loaded']}"


@pytest.mark.parametrize("k", ["0", "1001", "ten"])
def test_search_checks_k_while_parsing(k, tmp_path):
    result = run_main(["search", "--bucket", str(tmp_path), "--chip", "Z35-01313111111312103_KOTKAB.jpg", "--k", k])
    assert result["rc"] == 2
    assert not result["engine"] and result["loaded"] == []  # refused before the search modules are imported
    err = result["stderr"].strip().splitlines()
    assert err[-1].startswith("imagesim search: error: argument --k: ")
    assert "1 and 1000" in err[-1] or "'ten'" in err[-1]


def test_cli_k_limit_is_the_engines():
    from imagesim_pipeline.cli import common as cli
    from imagesim_pipeline.search.engine import MAX_K

    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_k(str(MAX_K + 1))
    assert cli.parse_k("1000") == 1000 and cli.parse_k("1") == 1
