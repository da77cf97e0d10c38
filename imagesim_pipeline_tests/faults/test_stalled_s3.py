"""Fault: the S3-compatible server freezes mid-run (SIGSTOP); every call fails within a minute, naming it."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from imagesim_pipeline.storage import StorageError, open_bucket


def _server_pid(endpoint: str) -> int:
    port = int(endpoint.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    raise AssertionError(f"nothing listens on {endpoint}")


def test_a_frozen_s3_server_fails_calls_within_a_minute_and_names_the_endpoint(s3_env, s3_server):
    bucket = open_bucket(s3_env)
    bucket.write_bytes("ard/readme.txt", b"before the freeze")
    pid = _server_pid(s3_server)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            bucket.read_bytes("ard/readme.txt")
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert took < 60, f"a stalled read took {took:.0f} s"
    assert s3_server in str(info.value) and "did not answer" in str(info.value)
    assert bucket.read_bytes("ard/readme.txt") == b"before the freeze"  # resumed: nothing lost
