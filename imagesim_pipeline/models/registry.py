"""Models in the bucket: staged, published (immutable) and served versions, and the pointers between them.

```
models/<name>/_staging/<version>/   a trained version awaiting export and checks (rewritable, never read by search)
models/<name>/<version>/            a published version: model.ckpt, model.onnx, metrics.json, model_card.md,
                                    plots/*.png, then manifest.json (written last: the version exists iff it does)
models/<name>/trained.json          the newest staged version (what onnx_model exports)
models/<name>/latest.json           the newest published version (what chip_embeddings encodes)
models/<name>/serving.json          the version search serves, moved by similarity_index once that version's
                                    index is complete
```

A published version is never written again: its manifest lists every file with its size and
SHA-256, so a reader can tell a complete version from the leftovers of a killed publish. Every
pointer and manifest goes through :mod:`imagesim_pipeline.storage.records` (one reader, one writer).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.metrics_record import ModelMetrics
from imagesim_pipeline.storage import Bucket, MissingObjectError, layout
from imagesim_pipeline.storage.records import CorruptRecordError, first_problem, read_record, write_record

DEFAULT_NAME = "smlc"
CHECKPOINT, ONNX, METRICS, CARD, MANIFEST = "model.ckpt", "model.onnx", "metrics.json", "model_card.md", "manifest.json"
PointerName = Literal["trained", "latest", "serving"]


class ModelNotFoundError(ImagesimError):
    """No such model version in the bucket; the message says what to run."""


class AlreadyPublishedError(ImagesimError):
    """A training run whose settings match a published version (published versions are never rewritten)."""


class IncompleteVersionError(ImagesimError):
    """A published version whose files differ from its manifest (damaged after publishing)."""


class Pointer(BaseModel):
    """``trained.json``, ``latest.json`` or ``serving.json``: which version a role names."""

    name: str
    version: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,80}$")
    moved: float = 0.0


class FileEntry(BaseModel):
    """A published file's size and SHA-256, as its version's manifest lists it."""

    bytes: int
    sha256: str


class ModelManifest(BaseModel):
    """The completion marker of a published version: its files, what it was trained on, when."""

    name: str
    version: str
    dataset_version: str
    settings_id: str = Field(description="the hash of the settings that made it (several versions may share it)")
    files: dict[str, FileEntry]
    published: float


def model_key(name: str, version: str, file: str) -> str:
    """Key of a published version's file."""
    return layout.model_key(name, version, file)


def staging_key(name: str, version: str, file: str) -> str:
    """Key of a staged version's file."""
    return layout.model_staging_key(name, version, file)


def _pointer_fix(name: str, which: str) -> str:
    if which == "serving":
        return "delete it and materialize similarity_index (encoder_job), which moves it once an index is complete"
    if which == "latest":
        return ("delete it and materialize onnx_model (trainer_job): it points latest.json at the newest published "
                "version (`imagesim model list`)")
    return f"delete it and materialize smlc_model, or write {{\"name\": \"{name}\", \"version\": \"v-...\"}}"


def read_pointer(bucket: Bucket, name: str, which: PointerName) -> Pointer | None:
    """A pointer, None when there is none; :class:`CorruptRecordError` when it is garbage."""
    return read_record(bucket, layout.model_pointer_key(name, which), Pointer, _pointer_fix(name, which))


def set_pointer(bucket: Bucket, name: str, which: PointerName, version: str) -> None:
    """Point a role at a version."""
    write_record(bucket, layout.model_pointer_key(name, which), Pointer(name=name, version=version, moved=time.time()))


def get_pointer(bucket: Bucket, name: str = DEFAULT_NAME, which: PointerName = "latest") -> str:
    """The version a pointer names; :class:`ModelNotFoundError` when there is none."""
    pointer = read_pointer(bucket, name, which)
    if pointer is None:
        step = {"trained": "materialize smlc_model",
                "latest": "materialize smlc_model and onnx_model (trainer_job)",
                "serving": "materialize chip_embeddings and similarity_index (encoder_job) "
                           "for a published model"}[which]
        raise ModelNotFoundError(f"no {which} model under {bucket.url(f'{layout.MODELS}{name}/')}: {step}, or run "
                                 "`python -m imagesim_pipeline.models.train_model`")
    return pointer.version


def served_version(bucket: Bucket, name: str = DEFAULT_NAME) -> str:
    """The version search serves: ``serving.json``; a bucket from before it existed serves ``latest.json``."""
    pointer = read_pointer(bucket, name, "serving")
    return pointer.version if pointer else get_pointer(bucket, name, "latest")


# -- published versions --------------------------------------------------------------------------
def read_manifest(bucket: Bucket, name: str, version: str) -> ModelManifest | None:
    """The manifest of a published version; None when the version is not published."""
    return read_record(bucket, model_key(name, version, MANIFEST), ModelManifest,
                       f"the version is damaged: delete models/{name}/{version}/manifest.json (the version is then "
                       "unpublished) and train again")


def is_published(bucket: Bucket, name: str, version: str) -> bool:
    """Whether the version's manifest exists (it is written last)."""
    return read_manifest(bucket, name, version) is not None


def require_published(bucket: Bucket, name: str, version: str) -> ModelManifest:
    """The manifest of a published version; :class:`ModelNotFoundError` saying what to do otherwise."""
    manifest = read_manifest(bucket, name, version)
    if manifest is None:
        raise ModelNotFoundError(f"model {name}/{version} is not published "
                                 f"({bucket.url(model_key(name, version, MANIFEST))} "
                                 "does not exist): materialize onnx_model for it, or pick a published version "
                                 "(`imagesim model list`)")
    return manifest


def published_versions(bucket: Bucket, name: str = DEFAULT_NAME) -> list[ModelManifest]:
    """Every published version of ``name``, oldest first (a damaged manifest is skipped, not fatal)."""
    out = []
    for obj in bucket.list(f"{layout.MODELS}{name}/"):
        parts = obj.key.split("/")
        if len(parts) == 4 and parts[3] == MANIFEST and not parts[2].startswith("_"):
            try:
                manifest = read_manifest(bucket, name, parts[2])
            except CorruptRecordError:
                continue
            if manifest is not None:
                out.append(manifest)
    return sorted(out, key=lambda m: m.published)


def next_version(bucket: Bucket, name: str, settings_id: str, force_new: bool) -> str:
    """The version a training run with ``settings_id`` publishes as.

    The settings' own id while it is unpublished (a killed run resumes under it); with ``force_new``
    the first ``<id>-<n>`` (n = 2, 3, ...) that is not published; otherwise :class:`AlreadyPublishedError`.
    """
    if not is_published(bucket, name, settings_id):
        return settings_id
    if not force_new:
        raise AlreadyPublishedError(f"already published: {name}/{settings_id} was trained with these settings and "
                                    "published versions are never rewritten; pass --force-new (Dagster: "
                                    "force_new: true) to train another")
    n = 2
    while is_published(bucket, name, f"{settings_id}-{n}"):
        n += 1
    return f"{settings_id}-{n}"


def publish(bucket: Bucket, name: str, version: str, files: dict[str, bytes], dataset_version: str,
            settings_id: str) -> ModelManifest:
    """Publish ``files`` (relative name -> bytes) as ``models/<name>/<version>/``, the manifest last.

    Leftovers of a killed publish of the same version are removed first; a version that is already
    published is refused, so nothing ever writes into a published prefix.
    """
    if is_published(bucket, name, version):
        raise AlreadyPublishedError(f"already published: {name}/{version}; published versions are never rewritten")
    bucket.delete_prefix(model_key(name, version, ""))  # a killed publish's partial files, never visible
    entries = {}
    for file, data in sorted(files.items()):
        bucket.write_bytes(model_key(name, version, file), data)
        entries[file] = FileEntry(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest = ModelManifest(name=name, version=version, dataset_version=dataset_version, settings_id=settings_id,
                             files=entries, published=time.time())
    write_record(bucket, model_key(name, version, MANIFEST), manifest)
    return manifest


def verify(bucket: Bucket, name: str, version: str) -> ModelManifest:
    """The manifest of a published version whose files are all there at their recorded sizes."""
    manifest = require_published(bucket, name, version)
    sizes = {obj.key: obj.size for obj in bucket.list(model_key(name, version, ""))}
    wrong = [file for file, entry in manifest.files.items() if sizes.get(model_key(name, version, file)) != entry.bytes]
    if wrong:
        raise IncompleteVersionError(f"model {name}/{version} does not match its manifest ({', '.join(wrong)} missing "
                                     "or of another size): the version was damaged after publishing; train again "
                                     "with --force-new and re-encode")
    return manifest


def read_published_file(bucket: Bucket, name: str, version: str, file: str) -> bytes:
    """A published file's bytes, checked against the manifest's SHA-256."""
    manifest = require_published(bucket, name, version)
    key = model_key(name, version, file)
    try:
        data = bucket.read_bytes(key)
    except MissingObjectError:
        data = b""
    entry = manifest.files.get(file)
    if entry is None or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise IncompleteVersionError(f"{bucket.url(key)} does not match model {name}/{version}'s manifest: the "
                                     "version was damaged after publishing; train again with --force-new")
    return data


@contextlib.contextmanager
def published_model_file(bucket: Bucket, name: str, version: str, file: str = ONNX) -> Iterator[Path]:
    """A local file holding a published file's bytes, checked against the manifest, for the block."""
    data = read_published_file(bucket, name, version, file)
    with tempfile.TemporaryDirectory(prefix="imagesim-model-") as tmp:
        path = Path(tmp) / file.rsplit("/", 1)[-1]
        path.write_bytes(data)
        yield path


def point_latest_at_newest(bucket: Bucket, name: str) -> str | None:
    """Move ``latest.json`` to the newest published version when it names another, none, or garbage (a publish
    killed between its manifest and the pointer, or a pointer deleted because it was damaged); that version."""
    versions = published_versions(bucket, name)
    if not versions:
        return None
    try:
        pointer = read_pointer(bucket, name, "latest")
    except CorruptRecordError:
        pointer = None
    newest = versions[-1].version
    if pointer is None or pointer.version != newest:
        set_pointer(bucket, name, "latest", newest)
        return newest
    return None


def read_metrics(bucket: Bucket, name: str, version: str) -> ModelMetrics:
    """``metrics.json`` of a published version, or of a staged one (trained, not yet published)."""
    for key in (model_key(name, version, METRICS), staging_key(name, version, METRICS)):
        try:
            text = bucket.read_text(key)
        except MissingObjectError:
            continue
        try:
            return ModelMetrics.from_json(text)
        except json.JSONDecodeError as exc:
            raise CorruptRecordError(f"{bucket.url(key)} is not valid JSON ({exc}): train the model again") from None
        except ValidationError as exc:
            raise CorruptRecordError(f"{bucket.url(key)} is not a model's metrics.json ({first_problem(exc)}): "
                                     "train the model again") from None
    raise ModelNotFoundError(f"model {name}/{version} is neither published nor staged under "
                             f"{bucket.url(model_key(name, version, ''))}: train it (trainer_job)")


__all__ = ["AlreadyPublishedError", "CARD", "CHECKPOINT", "DEFAULT_NAME", "FileEntry", "IncompleteVersionError",
           "MANIFEST", "METRICS", "ModelManifest", "ModelNotFoundError", "ONNX", "Pointer", "get_pointer",
           "is_published", "model_key", "next_version", "point_latest_at_newest", "publish", "published_model_file",
           "published_versions", "read_manifest",
           "read_metrics", "read_pointer", "read_published_file", "require_published", "served_version",
           "set_pointer", "staging_key", "verify"]
