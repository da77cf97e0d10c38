"""Project-wide settings, read from the environment with project-local defaults.

* ``IMAGESIM_BUCKET``: the bucket root, a folder path or ``s3://bucket/prefix``
  (default: ``data/bucket`` in the project).
* ``DAGSTER_HOME``: the Dagster instance folder (default: ``.dagster`` in the project, holding
  a link to the project's ``dagster.yaml``).
* ``IMAGESIM_DATA``: where offline sample data is fetched to (default: ``data/`` in the project).
* ``IMAGESIM_RUNS``: local training runs: checkpoints to resume from, TensorBoard logs
  (default: ``data/runs``).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("IMAGESIM_DATA", PROJECT_ROOT / "data")).expanduser()


def runs_dir() -> Path:
    """Where training runs keep their checkpoints and logs: ``IMAGESIM_RUNS`` or ``data/runs``."""
    return Path(os.environ.get("IMAGESIM_RUNS") or data_dir() / "runs").expanduser()


def bucket_uri() -> str:
    """The bucket root URI: ``IMAGESIM_BUCKET`` or the project's ``data/bucket`` folder."""
    return os.environ.get("IMAGESIM_BUCKET") or str(data_dir() / "bucket")


def dagster_home() -> Path:
    """The Dagster instance folder, created with the project's ``dagster.yaml`` if missing.

    Sets ``DAGSTER_HOME`` for this process when it was not set.
    """
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    project_config = PROJECT_ROOT / "dagster.yaml"
    if not config.exists() and project_config.exists():
        config.write_text(project_config.read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home
