"""imagesim's settings: one typed object, read from the environment (``IMAGESIM_`` prefix), the only place
a setting is read. Every resource and default is built from it; README's "Settings" table lists them.

The object is built anew on each ``settings()`` call (it is cheap), so a changed environment, as in
tests or a long-lived code server after a restart, is seen at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every setting of imagesim; the environment variable of a field is ``IMAGESIM_<FIELD>``
    unless noted."""

    model_config = SettingsConfigDict(env_prefix="IMAGESIM_", extra="ignore", populate_by_name=True,
                                      env_ignore_empty=True)

    data: Path = Field(PROJECT_ROOT / "data", description="where offline sample data is fetched to")
    bucket: str = Field("", description="the bucket root: a folder or s3://bucket/prefix (default: <data>/bucket)")
    runs: Path | None = Field(None, description="local training runs: checkpoints, TensorBoard logs "
                                                "(default: <data>/runs)")
    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("IMAGESIM_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="an S3-compatible endpoint (MinIO, moto); also AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL")
    osm_pbf: str = Field("", description="comma-separated .osm.pbf extracts (paths or bucket keys) for osm_data "
                                         "(default: the sample extracts and the demo's synthetic one)")
    overpass_url: str = Field("", description="an Overpass API endpoint: when set, osm_data queries it "
                                              "instead of reading extracts")
    vocabulary: str = Field("", description="a YAML/JSON label vocabulary (default: the built-in 13 labels)")
    vector_engine: Literal["faiss", "pgvector"] = Field(
        "faiss", description="where similarity indexes live: `faiss` (a file per model version in the bucket, "
                             "loaded by each search process) or `pgvector` (PostgreSQL with pgvector >= 0.8 at "
                             "IMAGESIM_PGVECTOR_DSN, shared by every search process)")
    pgvector_dsn: str = Field("", description="pgvector: the PostgreSQL connection string (libpq's PG* variables, "
                                              "such as PGPASSWORD, apply too)")
    faiss_threads: int | None = Field(None, ge=1, description="FAISS's OpenMP threads (default: the usable CPUs)")
    deployment: Literal["local", "aws"] = Field(
        "local", description="where runs execute: `local` (multiprocess executor on this machine) or `aws` "
                             "(every step an ECS task on the compute profile's capacity provider)")
    ecs_cluster: str = Field("", description="aws: the ECS cluster runs and steps are launched in")
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
                                   description="aws: the region of the cluster and bucket (AWS_REGION or "
                                               "AWS_DEFAULT_REGION)")
    ecs_datamaker_capacity_provider: str = Field("imagesim-datamaker", description="aws: the ECS capacity "
                                                 "provider of the datamaker profile (m5.xlarge)")
    ecs_trainer_capacity_provider: str = Field("imagesim-trainer", description="aws: the ECS capacity provider "
                                               "of the trainer profile (4 GPUs)")
    ecs_datamaker_task_definition: str = Field("imagesim-datamaker", description="aws: the task definition "
                                               "family of CPU steps (the datamaker/encoder image)")
    ecs_trainer_task_definition: str = Field("imagesim-trainer", description="aws: the task definition family "
                                             "of training steps (the CUDA trainer image)")
    dagster_home: Path | None = Field(None, validation_alias=AliasChoices("DAGSTER_HOME"),
                                      description="the Dagster instance folder (DAGSTER_HOME; default: .dagster "
                                                  "in the project)")

    @property
    def bucket_uri(self) -> str:
        """The bucket: IMAGESIM_BUCKET, else ``bucket`` in the data folder."""
        return self.bucket or str(self.data.expanduser() / "bucket")

    @property
    def instance_dir(self) -> Path:
        """The Dagster instance folder: DAGSTER_HOME, else the project's ``.dagster``."""
        return (self.dagster_home or PROJECT_ROOT / ".dagster").expanduser().resolve()

    @property
    def runs_dir(self) -> Path:
        """Where training runs keep checkpoints and logs."""
        return (self.runs or self.data / "runs").expanduser()


def settings() -> Settings:
    """The current settings."""
    return Settings()


def data_dir() -> Path:
    """The local data folder (samples, the default bucket, runs)."""
    return settings().data.expanduser()


def runs_dir() -> Path:
    """Where training runs keep their checkpoints and logs."""
    return settings().runs_dir


def bucket_uri() -> str:
    """The bucket root URI: ``IMAGESIM_BUCKET`` or the project's ``data/bucket`` folder."""
    return settings().bucket_uri


def dagster_home() -> Path:
    """The Dagster instance folder, created with the project's ``dagster.yaml`` if missing.

    Sets ``DAGSTER_HOME`` for this process when it was not set (Dagster reads it from there).
    """
    home = settings().instance_dir
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    project_config = PROJECT_ROOT / "dagster.yaml"
    if not config.exists() and project_config.exists():
        config.write_text(project_config.read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def settings_table() -> str:
    """The settings as a Markdown table (README's "Settings")."""
    rows = ["| variable | default | what |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = list(alias.choices) if isinstance(alias, AliasChoices) else [f"IMAGESIM_{name.upper()}"]
        default = field.default if field.default not in (None, "") else "—"
        if isinstance(default, Path):
            default = str(default.relative_to(PROJECT_ROOT)) if default.is_relative_to(PROJECT_ROOT) else str(default)
        rows.append(f"| `{names[0]}` | {default} | {field.description} |")
    return "\n".join(rows)


__all__ = ["PROJECT_ROOT", "Settings", "bucket_uri", "dagster_home", "data_dir", "runs_dir", "settings",
           "settings_table"]
