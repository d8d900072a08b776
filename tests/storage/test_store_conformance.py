"""Every blob store backend keeps the BlobStore contract (service/storage/base.py): the
same tests run on the file store and on the S3 store against a real S3-protocol server."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest

from service.storage.base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    input_name,
    job_prefix,
    result_name,
)
from tests.storage.blobs import MIN_PART_BYTES, SlowSource, pattern

#: Job ids as the service makes them (uuid4 hex); the file store refuses other names.
JOB = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
UNUSED = "00000000000000000000000000000000"


def test_put_bytes_then_read_returns_them_and_their_size(store: BlobStore) -> None:
    data = pattern(100_000)
    assert store.put(input_name(JOB, 0), data) == len(data)
    assert store.read(input_name(JOB, 0)) == data


def test_put_reads_a_stream_to_its_end_even_in_short_reads(store: BlobStore) -> None:
    data = pattern(700_000, seed=3)
    assert store.put(input_name(JOB, 1), SlowSource(data, chunk=65_536, delay=0)) == len(data)
    assert store.read(input_name(JOB, 1)) == data


def test_empty_object_round_trips(store: BlobStore) -> None:
    assert store.put(input_name(JOB, 2), b"") == 0
    assert store.exists(input_name(JOB, 2))
    assert store.read(input_name(JOB, 2)) == b""


def test_open_is_a_stream_with_sized_reads_and_a_context_manager(store: BlobStore) -> None:
    data = pattern(10_000)
    store.put(result_name(JOB), data)
    with store.open(result_name(JOB)) as stream:
        assert stream.read(10) == data[:10]
        assert stream.read(990) == data[10:1000]
        assert stream.read() == data[1000:]
        assert stream.read(5) == b""
    assert stream.closed


def test_closing_a_stream_before_its_end_is_clean(store: BlobStore) -> None:
    store.put(result_name(JOB), pattern(2_000_000))
    stream = store.open(result_name(JOB))
    assert len(stream.read(1000)) == 1000
    stream.close()
    assert stream.closed
    assert store.read(result_name(JOB)) == pattern(2_000_000)


def test_iter_chunks_yields_the_object_in_bounded_chunks(store: BlobStore) -> None:
    data = pattern(300_001)
    store.put(result_name(JOB, "png"), data)
    chunks = list(store.iter_chunks(result_name(JOB, "png"), chunk_bytes=65_536))
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= 65_536 for chunk in chunks)
    assert len(chunks) >= 5


def test_missing_blob_is_blob_not_found_everywhere(store: BlobStore) -> None:
    missing = result_name(UNUSED)
    with pytest.raises(BlobNotFound):
        store.open(missing)
    with pytest.raises(BlobNotFound):
        store.read(missing)
    with pytest.raises(BlobNotFound):
        store.iter_chunks(missing)  # raises on the call, before the first chunk
    assert store.exists(missing) is False


def test_exists_only_for_stored_names(store: BlobStore) -> None:
    store.put(input_name(JOB, 0), b"x")
    assert store.exists(input_name(JOB, 0))
    assert not store.exists(input_name(JOB, 1))


def test_overwrite_replaces_the_whole_object(store: BlobStore) -> None:
    store.put(result_name(JOB), pattern(50_000, seed=1))
    store.put(result_name(JOB), b"short")
    assert store.read(result_name(JOB)) == b"short"


def test_delete_removes_and_ignores_missing_names(store: BlobStore) -> None:
    store.put(input_name(JOB, 0), b"a")
    store.put(input_name(JOB, 1), b"b")
    store.delete([input_name(JOB, 0), input_name(UNUSED, 0)])
    assert not store.exists(input_name(JOB, 0))
    assert store.read(input_name(JOB, 1)) == b"b"
    store.delete([])


def test_list_gives_names_sizes_and_times_of_a_prefix(store: BlobStore) -> None:
    before = time.time()
    store.put(input_name(JOB, 0), b"12345")
    store.put(result_name(JOB), b"1234567")
    store.put(input_name(OTHER, 0), b"1")
    after = time.time()
    listed = sorted(store.list(job_prefix(JOB)), key=lambda info: info.name)
    assert [(info.name, info.size) for info in listed] == [
        (input_name(JOB, 0), 5),
        (result_name(JOB), 7),
    ]
    for info in listed:
        assert isinstance(info, BlobInfo)
        # S3 keeps whole seconds: allow its rounding, and a little clock skew.
        assert before - 2 <= info.modified <= after + 2
    assert {info.name for info in store.list("jobs/")} == {
        input_name(JOB, 0),
        result_name(JOB),
        input_name(OTHER, 0),
    }
    assert list(store.list(job_prefix(UNUSED))) == []


def test_delete_prefix_removes_only_that_prefix_and_counts(store: BlobStore) -> None:
    for index in range(3):
        store.put(input_name(JOB, index), b"x")
    store.put(input_name(OTHER, 0), b"y")
    assert store.delete_prefix(job_prefix(JOB)) == 3
    assert list(store.list(job_prefix(JOB))) == []
    assert store.read(input_name(OTHER, 0)) == b"y"
    assert store.delete_prefix(job_prefix(JOB)) == 0


def test_large_object_round_trips(store: BlobStore) -> None:
    """Larger than the S3 fixture's multipart threshold: parts, in order, reassembled."""
    data = pattern(2 * MIN_PART_BYTES + 12_345, seed=5)
    assert store.put(result_name(JOB), io.BytesIO(data)) == len(data)
    assert store.read(result_name(JOB)) == data
    (info,) = store.list(job_prefix(JOB))
    assert info.size == len(data)


def test_a_reader_during_an_overwrite_sees_the_old_or_the_new_object(store: BlobStore) -> None:
    old = pattern(MIN_PART_BYTES + 1000, seed=11)
    new = pattern(MIN_PART_BYTES + 1000, seed=22)
    store.put(result_name(JOB), old)
    source = SlowSource(new, chunk=512 * 1024, delay=0.02)
    writer = threading.Thread(target=store.put, args=(result_name(JOB), source))
    writer.start()
    try:
        assert source.started.wait(10)
        seen = set()
        while writer.is_alive():
            content = store.read(result_name(JOB))
            assert content in (old, new), f"a reader saw {len(content)} mixed bytes"
            seen.add(content == new)
    finally:
        writer.join(60)
    assert store.read(result_name(JOB)) == new
    assert False in seen  # the reads really overlapped the write


def test_presign_is_a_url_that_serves_the_bytes_where_the_backend_has_one(
    store: BlobStore, store_kind: str
) -> None:
    data = pattern(20_000)
    store.put(result_name(JOB), data)
    url = store.presign(result_name(JOB), 300)
    if store_kind == "file":
        assert url is None  # the API streams the file itself
        return
    assert url is not None
    assert url.startswith("http://127.0.0.1:")
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data


def test_check_passes_on_a_working_store(store: BlobStore) -> None:
    store.check()
    assert "://" in store.url
