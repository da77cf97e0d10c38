"""Small JSON records in the bucket (pointers, manifests): one reader and one writer for all of them.

A record is a pydantic model. :func:`read_record` answers ``None`` for a missing object and raises
:class:`CorruptRecordError` for anything else that is not a valid record (bytes that are not
UTF-8, JSON that is not an object, missing or mistyped fields): one line naming the object and
what to do, never retried (it is not a :class:`~imagesim_pipeline.errors.TransientError`; a
bucket that does not answer still raises ``StorageUnavailableError``, which is).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.storage.bucket import Bucket, MissingObjectError

Record = TypeVar("Record", bound=BaseModel)


class CorruptRecordError(ImagesimError):
    """A pointer or manifest in the bucket that is not what imagesim wrote; the message says what to do."""


def first_problem(exc: ValidationError) -> str:
    """A validation error in one line: where in the document, and what is wrong there."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "the document"
    return f"{where}: {first.get('msg', 'invalid')}"


def read_record(bucket: Bucket, key: str, model: type[Record], fix: str) -> Record | None:
    """The record at ``key``, None when there is none; :class:`CorruptRecordError` (with ``fix``) when unreadable."""
    try:
        data = bucket.read_bytes(key)
    except MissingObjectError:
        return None
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        reason = first_problem(exc)
    except UnicodeDecodeError as exc:  # pragma: no cover - pydantic reports bad UTF-8 as a ValidationError
        reason = f"not UTF-8 text ({exc.reason})"
    raise CorruptRecordError(f"{bucket.url(key)} is not a valid {model.__name__} record ({reason}): {fix}")


def write_record(bucket: Bucket, key: str, record: BaseModel) -> None:
    """Write ``record`` as JSON (one atomic object write)."""
    bucket.write_text(key, record.model_dump_json(indent=1))


__all__ = ["CorruptRecordError", "first_problem", "read_record", "write_record"]
