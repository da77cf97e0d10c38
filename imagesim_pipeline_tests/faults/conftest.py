"""The fault suite's shared set-up: a copy of the demo world with a fresh Dagster instance."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance

from imagesim_pipeline.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent
CELL = "Z35-013133111131"  # a Kotka cell of the demo world


@pytest.fixture
def site(world, tmp_path, monkeypatch):
    """(env, instance): a copy of the demo world and a fresh Dagster instance with its cells registered."""
    root, _ = world
    bucket = tmp_path / "bucket"
    shutil.copytree(root, bucket)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "IMAGESIM_BUCKET": str(bucket), "DAGSTER_HOME": str(home)}
    subprocess.run([BIN / "imagesim", "discover"], env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = DagsterInstance.from_config(str(home))
    yield env, instance
    instance.dispose()


