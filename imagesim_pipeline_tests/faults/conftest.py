"""The fault suite's shared set-up: a copy of the demo world with a fresh Dagster instance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance

from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline_tests.conftest import world_site

BIN = Path(sys.executable).parent
CELL = "Z35-013133111131"  # a Kotka cell of the demo world


@pytest.fixture
def site(world, tmp_path, monkeypatch):
    """(env, instance): a copy of the demo world and a fresh Dagster instance with its cells registered."""
    _, env = world_site(world[0], tmp_path)
    home = env["DAGSTER_HOME"]
    subprocess.run([BIN / "imagesim", "discover"], env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)
    monkeypatch.setenv("DAGSTER_HOME", home)
    instance = DagsterInstance.from_config(home)
    yield env, instance
    instance.dispose()


