"""What only the S3 backend does: URLs and prefixes, multipart uploads, store faults named
as such (fast, and without credentials), batched deletes, the lifecycle rule."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from service.storage.base import BlobNotFound, StoreUnavailable, input_name, result_name
from service.storage.s3 import (
    ABORT_INCOMPLETE_DAYS,
    DELETE_BATCH,
    MAX_PRESIGN_SECONDS,
    S3Store,
    lifecycle_rule,
    lifecycle_rules,
    parse_url,
)
from tests.factories import free_port, run_python
from tests.storage.blobs import MIN_PART_BYTES, pattern
from tests.storage.s3server import TEST_SECRET_KEY, S3Server, moto_server

JOB = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://hdr-blobs", "hdr-blobs", ""),
        ("s3://hdr-blobs/", "hdr-blobs", ""),
        ("s3://hdr-blobs/prod", "hdr-blobs", "prod/"),
        ("s3://hdr-blobs/team/prod/", "hdr-blobs", "team/prod/"),
    ],
)
def test_url_names_the_bucket_and_an_optional_prefix(url: str, bucket: str, prefix: str) -> None:
    assert parse_url(url) == (bucket, prefix)


@pytest.mark.parametrize(
    "url", ["file:///tmp/x", "s3:///prefix", "s3://bucket/p?region=x", "s3://bucket:9000/p"]
)
def test_url_that_is_not_bucket_and_prefix_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="S3 URL"):
        parse_url(url)


def test_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY") as caught:
        parse_url("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/prefix")
    assert "wJalrXUtnFEMI" not in str(caught.value)


def test_service_imports_without_boto3_and_an_s3_url_then_says_what_is_missing() -> None:
    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "from service.storage.s3 import S3Store\n"
        "try:\n"
        "    S3Store.from_url('s3://bucket/prefix')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    printed = run_python(code)
    assert "needs boto3" in printed
    assert "afunet-service[s3]" in printed


def test_store_url_and_keys_carry_the_prefix(s3_url: str, s3_server: S3Server) -> None:
    store = S3Store.from_url(s3_url)
    try:
        assert store.url == f"{s3_url}/"
        store.put(input_name(JOB, 0), b"abc")
        key = f"{s3_url.split('/', 3)[3]}/{input_name(JOB, 0)}"
        client = s3_server.client()
        assert client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"abc"
        client.close()
    finally:
        store.delete_prefix("")
        store.close()


def test_stores_on_two_prefixes_of_one_bucket_see_only_their_own(
    s3_url: str, s3_server: S3Server
) -> None:
    first, second = S3Store.from_url(s3_server.url()), S3Store.from_url(s3_server.url())
    whole = S3Store.from_url(f"s3://{s3_server.bucket}")
    try:
        first.put(result_name(JOB), b"first")
        second.put(result_name(JOB), b"second")
        assert first.read(result_name(JOB)) == b"first"
        assert [info.name for info in first.list("")] == [result_name(JOB)]
        assert first.delete_prefix("") == 1
        assert second.read(result_name(JOB)) == b"second"
        # The bucket-wide store names objects by their whole key.
        assert f"{second.prefix}{result_name(JOB)}" in {info.name for info in whole.list("")}
    finally:
        second.delete_prefix("")
        for store in (first, second, whole):
            store.close()


def test_large_put_is_a_multipart_upload_and_leaves_no_parts(
    s3_store: S3Store, s3_server: S3Server
) -> None:
    data = pattern(2 * MIN_PART_BYTES + 12_345, seed=7)
    assert s3_store.put(result_name(JOB), io.BytesIO(data)) == len(data)
    client = s3_server.client()
    try:
        head = client.head_object(Bucket=s3_server.bucket, Key=s3_store._key(result_name(JOB)))
        assert head["ETag"].strip('"').endswith("-3")  # S3's mark of a 3-part upload
        assert head["ContentLength"] == len(data)
        uploads = client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=s3_store.prefix)
        assert uploads.get("Uploads", []) == []
    finally:
        client.close()
    assert s3_store.read(result_name(JOB)) == data


class FailingSource(io.RawIOBase):
    """Gives ``good`` bytes, then fails like a client that went away mid-upload."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._good.readinto(buffer)
        if not n:
            raise ConnectionResetError("client went away")
        return n


def test_failed_multipart_put_keeps_the_old_object_and_aborts_the_upload(
    s3_store: S3Store, s3_server: S3Server
) -> None:
    s3_store.put(result_name(JOB), b"old")
    with pytest.raises(ConnectionResetError):
        s3_store.put(result_name(JOB), FailingSource(pattern(MIN_PART_BYTES + 10)))
    assert s3_store.read(result_name(JOB)) == b"old"
    client = s3_server.client()
    try:
        uploads = client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=s3_store.prefix)
        assert uploads.get("Uploads", []) == []
    finally:
        client.close()


@pytest.mark.slow
def test_delete_and_list_go_past_one_page_and_one_batch(s3_store: S3Store) -> None:
    count = DELETE_BATCH + 3
    names = [input_name(f"{index:032x}", 0) for index in range(count)]
    for name in names:
        s3_store.put(name, b"")
    listed = [info.name for info in s3_store.list("jobs/")]
    assert sorted(listed) == sorted(names)  # S3 pages hold 1000 keys
    s3_store.delete(names)  # DeleteObjects takes 1000 keys a request
    assert list(s3_store.list("jobs/")) == []


def test_presigned_url_is_signed_for_the_asked_lifetime_without_the_secret(
    s3_store: S3Store,
) -> None:
    url = s3_store.presign(result_name(JOB), 300)
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["300"]
    assert TEST_SECRET_KEY not in url
    assert urlsplit(url).path.endswith(f"/{s3_store.prefix}{result_name(JOB)}")
    longest = s3_store.presign(result_name(JOB), 30 * 86_400)
    assert longest is not None
    assert parse_qs(urlsplit(longest).query)["X-Amz-Expires"] == [str(MAX_PRESIGN_SECONDS)]


# --- store faults --------------------------------------------------------------------------


@pytest.fixture
def unreachable(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Store]:
    """A store whose endpoint is a closed loopback port."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store = S3Store.from_url(s3_url)
    yield store
    store.close()


def _assert_named_fault(caught: pytest.ExceptionInfo[StoreUnavailable], store: S3Store) -> None:
    message = str(caught.value)
    assert store.url in message
    assert TEST_SECRET_KEY not in message
    assert caught.value.code == "store_unavailable"
    assert caught.value.http_status == 503


def test_unreachable_endpoint_is_store_unavailable_within_seconds(unreachable: S3Store) -> None:
    calls = {
        "check": unreachable.check,
        "put": lambda: unreachable.put(result_name(JOB), b"x"),
        "open": lambda: unreachable.open(result_name(JOB)),
        "exists": lambda: unreachable.exists(result_name(JOB)),
        "list": lambda: list(unreachable.list("jobs/")),
        "delete": lambda: unreachable.delete([result_name(JOB)]),
    }
    for what, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            call()
        elapsed = time.monotonic() - started
        # Connection refused, retried twice with backoff: seconds, not minutes.
        assert elapsed < 15, f"{what} took {elapsed:.1f} s to fail"
        _assert_named_fault(caught, unreachable)
        assert "Could not connect" in str(caught.value), what


def test_missing_bucket_is_store_unavailable_not_blob_not_found(s3_url: str) -> None:
    store = S3Store.from_url(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/prefix")
    try:
        for call in (
            store.check,
            lambda: store.put(result_name(JOB), b"x"),
            lambda: store.open(result_name(JOB)),
            lambda: list(store.list("jobs/")),
        ):
            with pytest.raises(StoreUnavailable) as caught:
                call()
            assert not isinstance(caught.value, BlobNotFound)
            _assert_named_fault(caught, store)
            assert "does not exist" in str(caught.value)
    finally:
        store.close()


# --- lifecycle -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl_seconds", "days"), [(60, 1), (43_200, 1), (86_400, 2), (129_600, 3), (7 * 86_400, 14)]
)
def test_lifecycle_expires_jobs_after_twice_the_ttl_in_whole_days(
    ttl_seconds: int, days: int
) -> None:
    expire, abort = lifecycle_rules(ttl_seconds, "prod/")
    assert expire["Filter"] == {"Prefix": "prod/jobs/"}
    assert expire["Expiration"] == {"Days": days}
    assert expire["Status"] == "Enabled"
    assert abort["Filter"] == {"Prefix": "prod/"}
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": ABORT_INCOMPLETE_DAYS}
    assert lifecycle_rule(ttl_seconds, "prod/") == {"Rules": [expire, abort]}


def test_lifecycle_refuses_a_ttl_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="TTL"):
        lifecycle_rules(0)


def test_apply_lifecycle_merges_with_the_rules_of_others(s3_url: str, s3_server: S3Server) -> None:
    bucket = f"lifecycle-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    foreign = {
        "ID": "someone-else",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [foreign]}
    )
    store = S3Store.from_url(f"s3://{bucket}/prod")
    try:
        store.apply_lifecycle(86_400)
        store.apply_lifecycle(3 * 86_400)  # again, with a longer TTL: replaced, not added
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        by_id = {rule["ID"]: rule for rule in rules}
        assert len(rules) == 3
        assert by_id["someone-else"]["Expiration"] == {"Days": 30}
        ours = [rule for rule in rules if rule["ID"] != "someone-else"]
        expire = next(rule for rule in ours if "Expiration" in rule)
        assert expire["Expiration"] == {"Days": 6}
        assert expire["Filter"] == {"Prefix": "prod/jobs/"}
        abort = next(rule for rule in ours if "AbortIncompleteMultipartUpload" in rule)
        assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    finally:
        store.close()
        client.delete_bucket_lifecycle(Bucket=bucket)
        client.delete_bucket(Bucket=bucket)
        client.close()


def test_apply_lifecycle_on_a_bucket_without_rules(s3_url: str, s3_server: S3Server) -> None:
    bucket = f"lifecycle-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    store = S3Store.from_url(f"s3://{bucket}")
    try:
        rules = store.apply_lifecycle(86_400)
        assert rules == lifecycle_rules(86_400)
        stored = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert {rule["ID"] for rule in stored} == {rule["ID"] for rule in rules}
    finally:
        store.close()
        client.delete_bucket_lifecycle(Bucket=bucket)
        client.delete_bucket(Bucket=bucket)
        client.close()


def test_connection_lost_mid_object_is_store_unavailable_not_a_short_read(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that dies while an object streams out: the reader gets the store's fault,
    never a truncated object passed off as whole."""
    data = pattern(24 * 1024 * 1024, seed=9)
    with moto_server(tmp_path / "moto.log") as private:
        monkeypatch.setenv("AWS_ENDPOINT_URL", private.endpoint_url)
        store = S3Store.from_url(private.url())
        try:
            store.put(result_name(JOB), data)
            stream = store.open(result_name(JOB))
            assert stream.read(1000) == data[:1000]
            private.stop()
            with pytest.raises(StoreUnavailable) as caught:
                while stream.read(1024 * 1024):
                    pass
            _assert_named_fault(caught, store)
            stream.close()
        finally:
            store.close()
