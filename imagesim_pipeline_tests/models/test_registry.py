"""The model registry: published versions are immutable, a killed publish shows nothing, pointers and manifests
that are garbage fail with one line naming them, never retried."""

from __future__ import annotations

import pytest
from dagster import Failure

from imagesim_pipeline.errors import TransientError
from imagesim_pipeline.models.registry import (
    AlreadyPublishedError,
    IncompleteVersionError,
    ModelNotFoundError,
    get_pointer,
    is_published,
    model_key,
    next_version,
    publish,
    published_versions,
    read_manifest,
    read_published_file,
    served_version,
    set_pointer,
    verify,
)
from imagesim_pipeline.storage import StorageError, layout, open_bucket
from imagesim_pipeline.storage.records import CorruptRecordError
from imagesim_pipeline_tests.conftest import KilledAtWrite

FILES = {"model.onnx": b"onnx-bytes" * 50, "model.ckpt": b"ckpt" * 30, "metrics.json": b"{}",
         "plots/f2.png": b"png"}


def _snapshot(bucket, prefix: str) -> dict[str, bytes]:
    return {o.key: bucket.read_bytes(o.key) for o in bucket.list(prefix)}


def test_a_published_version_is_never_rewritten_and_force_new_numbers_the_next(tmp_path):
    bucket = open_bucket(tmp_path)
    assert next_version(bucket, "smlc", "v-abc", force_new=False) == "v-abc"  # unpublished: its own id
    manifest = publish(bucket, "smlc", "v-abc", FILES, "d-1", "v-abc")
    assert manifest.files["model.onnx"].bytes == len(FILES["model.onnx"])
    before = _snapshot(bucket, model_key("smlc", "v-abc", ""))
    with pytest.raises(AlreadyPublishedError, match=r"already published: smlc/v-abc .*pass --force-new"):
        next_version(bucket, "smlc", "v-abc", force_new=False)
    with pytest.raises(AlreadyPublishedError):
        publish(bucket, "smlc", "v-abc", {"model.onnx": b"other weights"}, "d-1", "v-abc")
    assert _snapshot(bucket, model_key("smlc", "v-abc", "")) == before  # byte-identical
    assert next_version(bucket, "smlc", "v-abc", force_new=True) == "v-abc-2"
    publish(bucket, "smlc", "v-abc-2", FILES, "d-1", "v-abc")
    assert next_version(bucket, "smlc", "v-abc", force_new=True) == "v-abc-3"
    assert [m.version for m in published_versions(bucket, "smlc")] == ["v-abc", "v-abc-2"]


@pytest.mark.parametrize("killed_at", [1, 3, 5])  # before any file, part-way, at the manifest itself
def test_a_killed_publish_leaves_no_version_and_the_next_publish_completes_it(tmp_path, killed_at):
    prefix = model_key("smlc", "v-k", "")
    with pytest.raises(KeyboardInterrupt):
        publish(KilledAtWrite(tmp_path, prefix, killed_at), "smlc", "v-k", FILES, "d-1", "v-k")
    bucket = open_bucket(tmp_path)
    assert not is_published(bucket, "smlc", "v-k") and read_manifest(bucket, "smlc", "v-k") is None
    with pytest.raises(ModelNotFoundError, match="is not published"):
        verify(bucket, "smlc", "v-k")
    # the next publish (another training's files) replaces the leftovers: nothing of the killed one stays
    other = {"model.onnx": b"second training", "metrics.json": b'{"n": 2}'}
    publish(bucket, "smlc", "v-k", other, "d-1", "v-k")
    assert {k[len(prefix):] for k in _snapshot(bucket, prefix)} == {"model.onnx", "metrics.json", "manifest.json"}
    assert read_published_file(bucket, "smlc", "v-k", "model.onnx") == b"second training"


def test_a_file_damaged_after_publishing_is_named(tmp_path):
    bucket = open_bucket(tmp_path)
    publish(bucket, "smlc", "v-d", FILES, "d-1", "v-d")
    verify(bucket, "smlc", "v-d")
    key = model_key("smlc", "v-d", "model.onnx")
    bucket.write_bytes(key, b"x" * len(FILES["model.onnx"]))  # same size, other bytes: the hash tells
    with pytest.raises(IncompleteVersionError, match="does not match model smlc/v-d's manifest"):
        read_published_file(bucket, "smlc", "v-d", "model.onnx")
    bucket.write_bytes(key, b"truncated")
    with pytest.raises(IncompleteVersionError, match=r"model\.onnx missing or of another size"):
        verify(bucket, "smlc", "v-d")


@pytest.mark.parametrize("garbage", [b"\xff\xfe{", b"[]", b'{"name": "smlc"}', b"{not json", b'{"name": "smlc", '
                                     b'"version": "../../etc"}'])
def test_a_garbage_pointer_is_one_line_naming_it_and_never_retried(tmp_path, garbage):
    from imagesim_pipeline.orchestration.failures import step_errors

    bucket = open_bucket(tmp_path)
    bucket.write_bytes(layout.model_pointer_key("smlc", "latest"), garbage)
    with pytest.raises(CorruptRecordError) as caught:
        get_pointer(bucket, "smlc", "latest")
    message = str(caught.value)
    assert "\n" not in message and bucket.url("models/smlc/latest.json") in message and "delete it" in message
    assert not isinstance(caught.value, TransientError)
    with pytest.raises(Failure) as failed:
        with step_errors():
            get_pointer(bucket, "smlc", "latest")
    assert failed.value.allow_retries is False


def test_search_serves_the_serving_pointer_and_old_buckets_their_latest(tmp_path):
    bucket = open_bucket(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no latest model"):
        served_version(bucket)
    set_pointer(bucket, "smlc", "latest", "v-1")
    assert served_version(bucket) == "v-1"  # a bucket from before serving.json existed
    set_pointer(bucket, "smlc", "latest", "v-2")
    set_pointer(bucket, "smlc", "serving", "v-1")  # v-2 published, its index not built yet
    assert served_version(bucket) == "v-1" and get_pointer(bucket, "smlc", "latest") == "v-2"


def test_a_bucket_that_does_not_answer_is_not_mistaken_for_a_missing_pointer(tmp_path, monkeypatch):
    from imagesim_pipeline.storage import StorageUnavailableError

    bucket = open_bucket(tmp_path)

    def stalled(key):
        raise StorageUnavailableError(f"{key}: the endpoint did not answer")

    monkeypatch.setattr(bucket, "read_bytes", stalled)
    with pytest.raises(StorageUnavailableError):  # transient: retried, never "no model"
        get_pointer(bucket, "smlc", "latest")
    monkeypatch.undo()
    with pytest.raises(StorageError):
        bucket.read_bytes("models/smlc/nothing.json")
