"""The blob store under test: every conformance test runs on each backend.

``store`` is a :class:`FileStore` on the test's temporary directory, or an
:class:`S3Store` on a prefix of its own in the session's moto server (tests/conftest.py);
the S3 prefix is emptied after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.storage.base import BlobStore
from tests.storage.blobs import MIN_PART_BYTES


@pytest.fixture(params=["file", "s3"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which backend ``store`` is."""
    return str(request.param)


@pytest.fixture
def store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BlobStore]:
    """A fresh, empty store of ``store_kind``."""
    instance: BlobStore
    if store_kind == "file":
        from service.storage.file import FileStore

        instance = FileStore(tmp_path)
        yield instance
        instance.close()
    else:
        yield request.getfixturevalue("s3_store")


@pytest.fixture
def s3_store(s3_url: str) -> Iterator[BlobStore]:
    """An S3 store on a fresh prefix whose multipart threshold and part size are S3's
    smallest (5 MiB), so tests reach the multipart path with small objects."""
    from boto3.s3.transfer import TransferConfig

    from service.storage.s3 import S3Store

    config = TransferConfig(
        multipart_threshold=MIN_PART_BYTES, multipart_chunksize=MIN_PART_BYTES, max_concurrency=2
    )
    instance = S3Store.from_url(s3_url, transfer_config=config)
    try:
        yield instance
    finally:
        instance.delete_prefix("")
        instance.close()
