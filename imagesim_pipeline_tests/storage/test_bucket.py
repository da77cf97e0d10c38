"""The bucket layer on both backends: a local folder and a local S3-compatible server."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from imagesim_pipeline.storage import LocalBucket, S3Bucket, StorageError, open_bucket


@pytest.fixture(params=["local", "s3"])
def bucket(request, tmp_path):
    if request.param == "local":
        return open_bucket(tmp_path / "bucket")
    uri = request.getfixturevalue("s3_env")
    return open_bucket(uri)


def test_open_bucket_picks_the_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "b"))
    assert isinstance(open_bucket(), LocalBucket)
    with pytest.raises(StorageError, match="unsupported bucket URI"):
        open_bucket("gs://elsewhere/x")


def test_write_read_list_exists_delete(bucket):
    bucket.write_text("ard/33/120020223133/2024-01-01/A.json", '{"a": 1}')
    bucket.write_bytes("ard/33/120020223133/2024-01-01/A-visual.tif", b"x" * 10)
    bucket.write_bytes("chips/33/c.jpg", b"jpg")
    assert bucket.read_text("ard/33/120020223133/2024-01-01/A.json") == '{"a": 1}'
    listing = {o.key: o.size for o in bucket.list("ard/")}
    assert listing == {"ard/33/120020223133/2024-01-01/A.json": 8,
                       "ard/33/120020223133/2024-01-01/A-visual.tif": 10}
    # A prefix that ends mid-name filters on the full prefix.
    assert [o.key for o in bucket.list("ard/33/120020223133/2024-01-01/A-")] == [
        "ard/33/120020223133/2024-01-01/A-visual.tif"]
    assert bucket.exists("chips/33/c.jpg") and not bucket.exists("chips/33/missing.jpg")
    bucket.delete("chips/33/c.jpg")
    bucket.delete("chips/33/c.jpg")  # deleting twice is fine
    assert not bucket.exists("chips/33/c.jpg")
    assert bucket.delete_prefix("ard/") == 2
    assert list(bucket.list("")) == []


def test_overwrite_replaces_whole_object(bucket):
    bucket.write_bytes("k/obj.bin", b"a" * 1000)
    bucket.write_bytes("k/obj.bin", b"b" * 10)
    assert bucket.read_bytes("k/obj.bin") == b"b" * 10


def test_missing_key_error_names_the_uri(bucket):
    with pytest.raises(StorageError, match="nope.json does not exist"):
        bucket.read_bytes("ard/nope.json")
    with pytest.raises(StorageError, match="does not exist"):
        bucket.download_file("ard/nope.json", "/tmp/never-written")


def test_keys_may_not_escape_the_bucket(bucket):
    with pytest.raises(StorageError, match="'..'"):
        bucket.write_bytes("../outside.txt", b"x")


def test_local_write_is_atomic_when_it_fails(tmp_path, monkeypatch):
    bucket = LocalBucket(tmp_path)
    bucket.write_bytes("a/b.txt", b"old")

    def broken_copy(src, dst):
        with open(dst, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("imagesim_pipeline.storage.bucket.shutil.copyfile", broken_copy)
    src = tmp_path / "src.txt"
    src.write_bytes(b"new content")
    with pytest.raises(OSError, match="disk full"):
        bucket.upload_file(src, "a/b.txt")
    assert bucket.read_bytes("a/b.txt") == b"old"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt"]  # no temporary left


def test_gdal_opens_objects_in_place(bucket, tmp_path):
    path = tmp_path / "small.tif"
    data = np.arange(3 * 64 * 64, dtype=np.uint8).reshape(3, 64, 64)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500_000, 5_000_000, 1, 1)) as dst:
        dst.write(data)
    bucket.upload_file(path, "ard/33/x/small.tif")
    gdal_path = bucket.gdal_path("ard/33/x/small.tif")
    if isinstance(bucket, S3Bucket):
        assert gdal_path.startswith("/vsis3/")
    with bucket.rasterio_env(), rasterio.open(gdal_path) as src:
        assert src.crs.to_epsg() == 32633
        assert np.array_equal(src.read(), data)


def test_s3_bucket_with_prefix_lists_relative_keys(s3_env):
    bucket = open_bucket(s3_env)
    assert bucket.prefix == "deliveries"
    bucket.write_text("ard/a.json", "{}")
    import boto3

    raw = boto3.client("s3").list_objects_v2(Bucket=bucket.bucket)["Contents"]
    assert [o["Key"] for o in raw] == ["deliveries/ard/a.json"]
    assert [o.key for o in bucket.list()] == ["ard/a.json"]


def test_unreachable_s3_endpoint_gives_clear_error(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    bucket = S3Bucket("s3://nowhere/x", session=boto3.Session(), endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="s3://nowhere/x/ard/.*AWS_ENDPOINT_URL"):
        list(bucket.list("ard/"))


def test_s3_bucket_signs_and_hands_gdal_the_sessions_credentials(monkeypatch):
    """The session given (not the environment's) signs the client and reaches GDAL."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-environment")
    import boto3

    session = boto3.Session(aws_access_key_id="AKIDSESSION", aws_secret_access_key="secret",
                            aws_session_token="token", region_name="eu-north-1")
    bucket = S3Bucket("s3://b/x", session=session, endpoint_url="http://127.0.0.1:9")
    assert bucket.client.meta.region_name == "eu-north-1"
    assert bucket.client.meta.config.read_timeout == 10.0  # imagesim's bounds, not botocore's 60 s
    with bucket.rasterio_env() as env:
        creds = env.session.get_credential_options()
    assert creds["AWS_ACCESS_KEY_ID"] == "AKIDSESSION" and creds["AWS_SESSION_TOKEN"] == "token"
    assert creds["AWS_S3_ENDPOINT"] == "127.0.0.1:9"
