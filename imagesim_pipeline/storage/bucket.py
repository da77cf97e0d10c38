"""One storage layer for the imagesim bucket: a local folder or ``s3://bucket/prefix``.

Every read and write of the bucket goes through :class:`Bucket`. Keys are ``/``-separated paths
relative to the bucket root (``ard/33/120020223133/...``). Writes are atomic: a local write goes
to a temporary name in the destination folder and is renamed into place; an S3 PUT (or a
completed multipart upload) is atomic by nature. Readers therefore never see half an object.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from typing_extensions import override

from imagesim_pipeline.errors import ImagesimError, TransientError

if TYPE_CHECKING:
    import boto3
    from botocore.exceptions import ClientError

TMP_PREFIX = ".imagesim-tmp-"  # a local atomic write in flight: never listed, cleaned by the next run


class StorageError(ImagesimError):
    """A bucket operation failed; the message names the URI and what to do."""


class MissingObjectError(StorageError):
    """The key does not exist (as opposed to a bucket that could not be read)."""


class StorageUnavailableError(StorageError, TransientError):
    """The S3 endpoint did not answer (timeouts, refused connections): worth retrying later."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing."""

    key: str
    size: int
    modified: datetime


def _clean_key(key: str) -> str:
    key = key.replace("\\", "/").lstrip("/")
    if any(part == ".." for part in key.split("/")):
        raise StorageError(f"key {key!r} may not contain '..'")
    return key


class Bucket(ABC):
    """A bucket root. Subclasses implement the primitive operations for one backend."""

    uri: str

    def url(self, key: str) -> str:
        """The full URI of ``key`` (for messages and metadata)."""
        return f"{self.uri.rstrip('/')}/{_clean_key(key)}"

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursively), in no guaranteed order."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; :class:`MissingObjectError` when there is none."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically, replacing any previous object."""

    @abstractmethod
    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        """Copy a local file to ``key`` atomically."""

    @abstractmethod
    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Copy ``key`` to a local file; :class:`MissingObjectError` when there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object ``key`` exists."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    @abstractmethod
    def gdal_path(self, key: str) -> str:
        """A path that GDAL/rasterio opens directly (a file path, or ``/vsis3/...``)."""

    def gdal_options(self) -> dict[str, Any]:
        """GDAL configuration options needed to open :meth:`gdal_path` (see :meth:`rasterio_env`)."""
        return {}

    def rasterio_env(self) -> contextlib.AbstractContextManager[Any]:
        """A ``rasterio.Env`` configured to read this bucket's :meth:`gdal_path` values."""
        import rasterio

        return rasterio.Env(**self.gdal_options())

    # --- conveniences built on the primitives --------------------------------------------------
    def read_text(self, key: str) -> str:
        """The object as UTF-8 text."""
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        """Write ``text`` as UTF-8, atomically."""
        self.write_bytes(key, text.encode("utf-8"))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        keys = [obj.key for obj in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def move(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (``dst`` appears whole or not at all; ``src`` is gone afterwards)."""
        self.write_bytes(dst, self.read_bytes(src))
        self.delete(src)

    def clean_temporaries(self, prefix: str) -> int:
        """Remove what interrupted writes left under ``prefix``; returns how many. Nothing by default."""
        return 0

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A local file holding ``key``'s bytes for the duration of the block."""
        with tempfile.TemporaryDirectory(prefix="imagesim-") as tmp:
            path = Path(tmp) / Path(key).name
            self.download_file(key, path)
            yield path


class LocalBucket(Bucket):
    """A bucket that is a folder on the local file system."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    @override
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = _clean_key(prefix)
        # Walk from the deepest folder the prefix names, then filter on the full prefix.
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not folder.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            for name in sorted(filenames):
                if name.startswith(TMP_PREFIX):
                    continue  # an atomic write in flight (or one that crashed)
                key = rel_dir + name
                if not key.startswith(prefix):
                    continue
                try:
                    stat = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted while we listed
                yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    @override
    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(f"{self.url(key)} does not exist") from None

    @contextlib.contextmanager
    def _atomic_target(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @override
    def write_bytes(self, key: str, data: bytes) -> None:
        with self._atomic_target(key) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())

    @override
    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        with self._atomic_target(key) as tmp:
            shutil.copyfile(local_path, tmp)

    @override
    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        try:
            shutil.copyfile(self._path(key), local_path)
        except FileNotFoundError:
            raise MissingObjectError(f"{self.url(key)} does not exist") from None

    @override
    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    @override
    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @override
    def gdal_path(self, key: str) -> str:
        return str(self._path(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` and the folders it leaves empty (S3 has no folders to leave)."""
        removed = super().delete_prefix(prefix)
        folder = self._path(prefix) if prefix.endswith("/") else None
        if folder is not None and folder.is_dir():
            for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            if not any(folder.iterdir()):
                folder.rmdir()
        return removed

    @override
    def move(self, src: str, dst: str) -> None:
        target = self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self._path(src), target)  # atomic within the bucket's file system
        except FileNotFoundError:
            raise MissingObjectError(f"{self.url(src)} does not exist") from None

    def clean_temporaries(self, prefix: str) -> int:
        """Delete ``.imagesim-tmp-*`` files (atomic writes a killed process left) for keys under ``prefix``."""
        prefix = _clean_key(prefix)
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        name_prefix = prefix.rsplit("/", 1)[-1]
        removed = 0
        for path in folder.glob(f"{TMP_PREFIX}*") if folder.is_dir() else ():
            if path.name[len(TMP_PREFIX) + 33:].startswith(name_prefix):  # <uuid hex>-<name>
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    @override
    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.is_file():
            raise MissingObjectError(f"{self.url(key)} does not exist")
        yield path


class S3Bucket(Bucket):
    """A bucket on S3 or an S3-compatible server, ``s3://bucket[/prefix]``.

    ``session`` is the boto3 session whose credentials and region reach the bucket (default: boto3's
    default chain: environment, profile, instance role). The same session makes the S3 client and
    gives GDAL its credentials for ``/vsis3/`` paths. ``endpoint_url`` names a custom S3-compatible
    endpoint; it is also handed to GDAL so that ``/vsis3/`` paths reach the same server.
    """

    def __init__(self, uri: str, session: boto3.Session | None = None, endpoint_url: str | None = None):
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"{uri!r} is not an s3://bucket/prefix URI")
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if endpoint_url is None:
            from imagesim_pipeline.settings import settings

            endpoint_url = settings().s3_endpoint_url
        self.endpoint_url = endpoint_url
        if session is None:
            import boto3

            session = boto3.Session()
        self.session = session
        self.client = _bounded_client(session, self.endpoint_url)

    def _key(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, action: str, key: str, exc: Exception) -> StorageError:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ReadTimeoutError

        endpoint = self.client.meta.endpoint_url
        if isinstance(exc, (ReadTimeoutError, BotoConnectionError)):
            return StorageUnavailableError(
                f"{action} {self.url(key)} failed: the S3 endpoint {endpoint} did not answer "
                f"({type(exc).__name__}, {S3_ATTEMPTS} attempts, {S3_READ_TIMEOUT_S:.0f} s read timeout each). "
                "Check that the server is up and reachable (AWS_ENDPOINT_URL names an S3-compatible one), then "
                "re-run: completed writes are kept.")
        return StorageError(
            f"{action} {self.url(key)} failed at {endpoint}: {exc}. Check the bucket name, the credentials "
            "(AWS_PROFILE / AWS_ACCESS_KEY_ID) and, for an S3-compatible server, AWS_ENDPOINT_URL."
        )

    @contextlib.contextmanager
    def _calling(self, action: str, key: str) -> Iterator[None]:
        """botocore's errors as imagesim's, for the one S3 call in the block: a missing key is
        :class:`MissingObjectError`, an endpoint that does not answer :class:`StorageUnavailableError`,
        anything else :class:`StorageError` naming the key and what to check."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            if _missing(exc):
                raise MissingObjectError(f"{self.url(key)} does not exist") from None
            raise self._error(action, key, exc) from exc
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise self._error(action, key, exc) from exc

    @override
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        with self._calling("listing", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj["LastModified"])

    @override
    def read_bytes(self, key: str) -> bytes:
        with self._calling("reading", key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    @override
    def write_bytes(self, key: str, data: bytes) -> None:
        with self._calling("writing", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    @override
    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        with self._calling("uploading", key):
            self.client.upload_file(str(local_path), self.bucket, self._key(key))

    @override
    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        with self._calling("downloading", key):
            self.client.download_file(self.bucket, self._key(key), str(local_path))

    @override
    def exists(self, key: str) -> bool:
        try:
            with self._calling("checking", key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except MissingObjectError:
            return False
        return True

    @override
    def delete(self, key: str) -> None:
        with self._calling("deleting", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    @override
    def gdal_path(self, key: str) -> str:
        return f"/vsis3/{self.bucket}/{self._key(key)}"

    @override
    def move(self, src: str, dst: str) -> None:
        with self._calling("moving", src):  # a server-side copy: the new object appears whole, then the source goes
            self.client.copy_object(Bucket=self.bucket, Key=self._key(dst),
                                    CopySource={"Bucket": self.bucket, "Key": self._key(src)})
        self.delete(src)

    @override
    def gdal_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
                                   # reading COGs over HTTP: merged range requests, HTTP/2, a block cache
                                   "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES", "GDAL_HTTP_MULTIPLEX": "YES",
                                   "GDAL_HTTP_VERSION": "2", "VSI_CACHE": "TRUE",
                                   "VSI_CACHE_SIZE": str(64 * 1024 * 1024),
                                   # bounded like the boto3 client: a stalled endpoint fails, never hangs
                                   "GDAL_HTTP_CONNECTTIMEOUT": str(int(S3_CONNECT_TIMEOUT_S)),
                                   "GDAL_HTTP_TIMEOUT": str(int(S3_READ_TIMEOUT_S)),
                                   "GDAL_HTTP_MAX_RETRY": str(S3_ATTEMPTS - 1), "GDAL_HTTP_RETRY_DELAY": "1"}
        if self.endpoint_url:
            endpoint = urlparse(self.endpoint_url)
            options["AWS_HTTPS"] = "YES" if endpoint.scheme == "https" else "NO"
            options["AWS_VIRTUAL_HOSTING"] = "FALSE"
        return options

    def rasterio_env(self) -> contextlib.AbstractContextManager[Any]:
        """A ``rasterio.Env`` with this client's credentials and endpoint, for ``/vsis3/`` paths."""
        import rasterio
        from rasterio.session import AWSSession

        credentials = self.session.get_credentials()  # what the client signs with, resolved by the same session
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        session = AWSSession(
            aws_unsigned=frozen is None,
            aws_access_key_id=frozen.access_key if frozen else None,
            aws_secret_access_key=frozen.secret_key if frozen else None,
            aws_session_token=frozen.token if frozen else None,
            region_name=self.client.meta.region_name,
            endpoint_url=urlparse(self.endpoint_url).netloc if self.endpoint_url else None,
        )
        return rasterio.Env(session=session, **self.gdal_options())


def _missing(exc: ClientError) -> bool:
    """Whether a botocore ``ClientError`` says the key does not exist."""
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


# Every S3 call is bounded: a stalled endpoint fails a step in well under a minute, not after
# botocore's defaults (60 s per read, legacy retries: minutes per call).
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 10.0
S3_ATTEMPTS = 3  # botocore "standard" retry mode: exponential backoff with jitter between attempts


def _bounded_client(session: boto3.Session, endpoint_url: str | None) -> Any:
    """The session's S3 client with imagesim's timeouts and retries."""
    from botocore.config import Config

    config = Config(connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S,
                    retries={"mode": "standard", "max_attempts": S3_ATTEMPTS})
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def open_bucket(uri: str | os.PathLike[str] | None = None, *, session: boto3.Session | None = None,
                endpoint_url: str | None = None) -> Bucket:
    """The bucket at ``uri`` (default: the ``IMAGESIM_BUCKET`` setting); ``session`` and ``endpoint_url`` for S3."""
    from imagesim_pipeline.settings import bucket_uri

    uri = str(uri) if uri is not None else bucket_uri()
    if uri.startswith("s3://"):
        return S3Bucket(uri, session=session, endpoint_url=endpoint_url)
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported bucket URI {uri!r}: use a folder path or s3://bucket/prefix")
    return LocalBucket(uri.removeprefix("file://"))
