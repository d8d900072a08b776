"""A real S3-protocol server for the tests: moto's standalone server on loopback.

It runs as a subprocess (``python -m moto.server``), so the code under test talks HTTP to
it exactly as to S3 or MinIO: signatures, multipart uploads, presigned URLs and errors all
go over the wire. One server per test session; each test gets a key prefix of its own in
the session's bucket (the same isolation as the Redis key prefix).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.factories import free_port

#: The S3 variables a test sets, and those it clears so no real account is ever used.
AWS_VARIABLES_CLEARED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
#: The secret key of the test server: distinctive, so that tests can assert that no error
#: message ever carries it.
TEST_SECRET_KEY = "test-secret-0123456789-never-in-messages"


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 server listens, and the credentials and bucket to use there."""

    endpoint_url: str
    bucket: str
    region: str = "us-east-1"
    access_key: str = "test-access-key"
    secret_key: str = TEST_SECRET_KEY
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def stop(self) -> None:
        """Stop the server now (tests of a store that goes away)."""
        if self.process is not None:
            _stop(self.process)

    def env(self, endpoint_url: str | None = None) -> dict[str, str]:
        """The AWS variables that point boto3 at this server (or at ``endpoint_url``)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": endpoint_url or self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def url(self, prefix: str | None = None) -> str:
        """``s3://bucket/prefix`` with a fresh prefix unless one is given."""
        return f"s3://{self.bucket}/{prefix or f'test-{uuid.uuid4().hex[:12]}'}"

    def client(self) -> Any:
        """A plain boto3 client on the server, to look behind the store's back."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def moto_server(log: Path, timeout: float = 60) -> Iterator[S3Server]:
    """Start ``python -m moto.server`` on a free loopback port with one bucket created,
    its output in ``log``; stop it when the block ends."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        server = S3Server(
            endpoint_url=f"http://127.0.0.1:{port}", bucket="afunet-test", process=process
        )
        client = server.client()
        client.create_bucket(Bucket=server.bucket)
        client.close()
        yield server
    finally:
        _stop(process)
