"""Models in the bucket: ``models/<name>/<version>/`` and the pointers to the trained and the published one.

``models/<name>/<version>/``: ``model.ckpt`` (Lightning checkpoint), ``model.onnx``,
``metrics.json``, ``model_card.md``. ``models/<name>/trained.json`` names the newest trained
version (what ``onnx_model`` exports); ``models/<name>/latest.json`` the newest version that
passed its checks (what search uses). Every object is written atomically by the bucket layer,
and a version's ``metrics.json`` is written after its checkpoint.
"""

from __future__ import annotations

import json
from typing import Any

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage import Bucket, StorageError, layout

MODELS_PREFIX = layout.MODELS
DEFAULT_NAME = "smlc"
CHECKPOINT, ONNX, METRICS, CARD = "model.ckpt", "model.onnx", "metrics.json", "model_card.md"


class ModelNotFoundError(ImagesimError):
    """No such model version in the bucket; the message says what to run."""


model_key = layout.model_key
pointer_key = layout.model_pointer_key


def set_pointer(bucket: Bucket, name: str, which: str, version: str, **extra: Any) -> None:
    bucket.write_text(pointer_key(name, which), json.dumps({"name": name, "version": version, **extra}))


def get_pointer(bucket: Bucket, name: str = DEFAULT_NAME, which: str = "latest") -> str:
    """The version a pointer names; :class:`ModelNotFoundError` when there is none."""
    try:
        return json.loads(bucket.read_text(pointer_key(name, which)))["version"]
    except (StorageError, KeyError, json.JSONDecodeError):
        step = "materialize smlc_model" if which == "trained" else "materialize smlc_model and onnx_model"
        raise ModelNotFoundError(f"no {which} model under {bucket.url(f'{MODELS_PREFIX}{name}/')}: {step} "
                                 "(trainer_job), or run `python -m imagesim_pipeline.models.train_model`") from None


def read_metrics(bucket: Bucket, name: str, version: str) -> dict[str, Any]:
    key = model_key(name, version, METRICS)
    try:
        return json.loads(bucket.read_text(key))
    except StorageError:
        raise ModelNotFoundError(f"{bucket.url(key)} does not exist: model {name}/{version} is missing or "
                                 "incomplete; train it again") from None


def write_metrics(bucket: Bucket, name: str, version: str, metrics: dict[str, Any]) -> None:
    bucket.write_text(model_key(name, version, METRICS), json.dumps(metrics, indent=2))


__all__ = ["CARD", "CHECKPOINT", "DEFAULT_NAME", "METRICS", "MODELS_PREFIX", "ModelNotFoundError", "ONNX",
           "get_pointer", "model_key", "pointer_key", "read_metrics", "set_pointer", "write_metrics"]
