"""The one settings object: names, precedence, validation, and the README table that documents it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from imagesim_pipeline.settings import PROJECT_ROOT, Settings, settings, settings_table
from imagesim_pipeline.storage import open_bucket


def test_defaults_and_overrides(monkeypatch, tmp_path):
    for name in ("IMAGESIM_BUCKET", "IMAGESIM_DATA", "IMAGESIM_RUNS"):
        monkeypatch.delenv(name, raising=False)
    assert settings().bucket_uri == str(PROJECT_ROOT / "data" / "bucket")
    monkeypatch.setenv("IMAGESIM_DATA", str(tmp_path))
    assert settings().bucket_uri == str(tmp_path / "bucket") and settings().runs_dir == tmp_path / "runs"
    monkeypatch.setenv("IMAGESIM_BUCKET", "s3://b/p")
    assert settings().bucket_uri == "s3://b/p"


def test_the_s3_endpoint_prefers_the_most_specific_name(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert settings().s3_endpoint_url == "http://generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    assert settings().s3_endpoint_url == "http://s3only:2"
    monkeypatch.setenv("IMAGESIM_S3_ENDPOINT_URL", "http://imagesim:3")
    assert settings().s3_endpoint_url == "http://imagesim:3"
    assert open_bucket("s3://some-bucket/x").client.meta.endpoint_url == "http://imagesim:3"


def test_bad_values_are_refused_by_name_and_empty_ones_ignored(monkeypatch):
    monkeypatch.setenv("IMAGESIM_FAISS_THREADS", "")
    assert settings().faiss_threads is None
    monkeypatch.setenv("IMAGESIM_FAISS_THREADS", "0")
    with pytest.raises(ValidationError, match="faiss_threads"):
        settings()


def test_the_readme_documents_every_setting():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert settings_table() in readme
    assert len(Settings.model_fields) == settings_table().count("\n") - 1
