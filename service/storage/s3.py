"""The S3 backend: ``s3://bucket/prefix`` on AWS S3 or any S3-compatible server.

The client is boto3, the reference AWS SDK: it is well kept, speaks to every S3-compatible
store (MinIO, Ceph RGW, R2, GCS interoperability), brings multipart transfers
(s3transfer) and presigned URLs, and configures itself from the standard AWS variables,
so the service adds no settings of its own for S3:

- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), or any
  other source of boto3's credential chain (a profile, web identity on Kubernetes, an
  instance role);
- ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for a server other than AWS;
- ``AWS_REGION``, read by :meth:`S3Store.from_url` (botocore itself reads only
  ``AWS_DEFAULT_REGION``, which works as well).

boto3 is imported inside :meth:`S3Store.from_url`, so the service imports and runs with
the file store on an installation without it (it is the ``s3`` extra).

Every botocore and boto3 error is translated here into :class:`StoreUnavailable` or
:class:`BlobNotFound`, with a message that names the store and the cause and never a
credential. Timeouts are short and retries few (:data:`CONNECT_TIMEOUT_SECONDS`,
:data:`READ_TIMEOUT_SECONDS`, :data:`MAX_ATTEMPTS`): an unreachable store must turn a
submission into a quick 503, not hang the request behind the SDK's default of 60 s per
attempt and five attempts.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import math
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Final, NoReturn
from urllib.parse import urlsplit

from service.storage.base import JOBS_PREFIX, BlobInfo, BlobNotFound, BlobStore, StoreUnavailable

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

log = logging.getLogger(__name__)

#: Seconds to open a connection to the store; a dead endpoint fails within a few of these.
CONNECT_TIMEOUT_SECONDS: Final = 3.0
#: Seconds to wait for any one socket read (not for a whole object).
READ_TIMEOUT_SECONDS: Final = 20.0
#: Attempts per request, the first included (botocore's "standard" retry mode: exponential
#: backoff with jitter, retrying throttling, 5xx and connection errors).
MAX_ATTEMPTS: Final = 3
#: Objects above this size are uploaded in parts (parts of the same size), each part
#: retried on its own instead of the whole object.
MULTIPART_THRESHOLD_BYTES: Final = 16 * 1024 * 1024
MULTIPART_CHUNK_BYTES: Final = 16 * 1024 * 1024
#: Parts uploaded at once per put: bounds both the connections and the memory of a
#: put (about this many parts in flight, each held in memory while it is sent).
MAX_UPLOAD_CONCURRENCY: Final = 4
#: Longest lifetime S3 accepts for a SigV4 presigned URL (7 days).
MAX_PRESIGN_SECONDS: Final = 7 * 86400
#: DeleteObjects takes at most this many keys per request (an S3 limit).
DELETE_BATCH: Final = 1000
#: Lifecycle rules this service owns in a bucket have IDs starting with this, followed by
#: the rule's purpose and the store's prefix (stores on several prefixes share a bucket).
RULE_ID_PREFIX: Final = "afunet-service"
#: Days after which S3 aborts a multipart upload that was never completed or aborted.
ABORT_INCOMPLETE_DAYS: Final = 1

_SECONDS_PER_DAY: Final = 86400
#: Error codes S3 (and compatible servers) answer for a missing object.
_MISSING_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, key prefix ending in ``/``, or empty).

    Credentials in the URL are refused rather than accepted: the URL is logged and shown by
    /readyz, and credentials belong to the AWS variables or boto3's credential chain.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.hostname:
        raise ValueError(f"not an S3 URL (s3://bucket/prefix): {url.split('@')[-1]!r}")
    if parts.username or parts.password or parts.port:
        raise ValueError(
            "an S3 URL names only the bucket and prefix (s3://bucket/prefix); credentials go"
            " in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the endpoint in AWS_ENDPOINT_URL"
        )
    if parts.query or parts.fragment:
        raise ValueError("an S3 URL takes no query or fragment (s3://bucket/prefix)")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def lifecycle_rules(ttl_seconds: float, prefix: str = "") -> list[dict[str, Any]]:
    """The bucket lifecycle rules for a store whose key prefix is ``prefix``.

    S3 lifecycle works in whole days, counted from an object's creation and applied by S3
    roughly once a day, so it cannot expire blobs at the job TTL: the sweeper does that.
    The rule is the backstop for blobs the sweeper missed (a crashed API, a sweeper that
    never ran): objects under ``<prefix>jobs/`` expire after ceil(2 x TTL) days (at least
    one), long after any record that names them; and multipart uploads that were never
    completed (a process killed mid-put) are aborted after a day, since their parts are
    billed but invisible to listing and so to the sweeper.
    """
    if ttl_seconds <= 0:
        raise ValueError(f"the job TTL must be positive, got {ttl_seconds}")
    days = max(1, math.ceil(2 * ttl_seconds / _SECONDS_PER_DAY))
    return [
        {
            "ID": f"{RULE_ID_PREFIX} expire-jobs {prefix}{JOBS_PREFIX}",
            "Filter": {"Prefix": f"{prefix}{JOBS_PREFIX}"},
            "Status": "Enabled",
            "Expiration": {"Days": days},
        },
        {
            "ID": f"{RULE_ID_PREFIX} abort-multipart {prefix or '/'}",
            "Filter": {"Prefix": prefix},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_DAYS},
        },
    ]


def lifecycle_rule(ttl_seconds: float, prefix: str = "") -> dict[str, Any]:
    """The bucket lifecycle configuration holding only this service's rules (see
    :func:`lifecycle_rules`), as ``put_bucket_lifecycle_configuration`` takes it."""
    return {"Rules": lifecycle_rules(ttl_seconds, prefix)}


class _CountingReader:
    """A non-seekable reader over the source that fills every read and counts the bytes.

    s3transfer takes a read shorter than asked for as the end of the stream (it decides
    between one PUT and a multipart upload by how much a read of the threshold returned,
    and sends each part as one read), while a socket, a pipe or a raw file may return
    less: so reads are repeated until full or at the end. Not seekable, so s3transfer
    reads the source strictly in order, one part at a time; and the count gives put()
    the size without a HEAD request after the upload.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data = self._source.read()
        else:
            data = self._source.read(size)
            if data and len(data) < size:
                parts = [data]
                missing = size - len(data)
                while missing and (more := self._source.read(missing)):
                    parts.append(more)
                    missing -= len(more)
                data = b"".join(parts)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class _Body(io.RawIOBase):
    """A botocore streaming body whose read errors are :class:`StoreUnavailable`.

    A connection can drop, or a read time out, in the middle of an object; the caller must
    see the store's named failure then, not a botocore or urllib3 exception.
    """

    def __init__(self, store: S3Store, name: str, body: Any) -> None:
        self._store = store
        self._name = name
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._store._translated(self._name):
            return int(self._body.readinto(buffer))

    def readall(self) -> bytes:
        # One read of the rest, instead of RawIOBase's loop of 8 KiB reads.
        with self._store._translated(self._name):
            return bytes(self._body.read())

    def close(self) -> None:
        if not self.closed:
            # Closing before the end drops the connection instead of draining the rest.
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


class S3Store(BlobStore):
    """Blobs as objects ``<prefix><name>`` in one bucket.

    An S3 PUT (and the completion of a multipart upload) replaces an object atomically, so
    put() needs no temporary name: readers see the old object or the whole new one.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        transfer_config: TransferConfig | None = None,
    ) -> None:
        """Use ``client`` (a boto3 S3 client) on ``bucket``; object keys are ``prefix``
        followed by the blob's name. Build stores with :meth:`from_url`."""
        if transfer_config is None:
            from boto3.s3.transfer import TransferConfig

            transfer_config = TransferConfig(
                multipart_threshold=MULTIPART_THRESHOLD_BYTES,
                multipart_chunksize=MULTIPART_CHUNK_BYTES,
                max_concurrency=MAX_UPLOAD_CONCURRENCY,
                use_threads=True,
            )
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.transfer_config = transfer_config
        self.url = f"s3://{bucket}/{prefix}"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        max_attempts: int = MAX_ATTEMPTS,
        transfer_config: TransferConfig | None = None,
    ) -> S3Store:
        """The store at ``s3://bucket/prefix``; credentials, endpoint and region come from
        the AWS variables (see the module docstring). Makes no request: :meth:`check`
        tells whether the bucket answers."""
        bucket, prefix = parse_url(url)
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ModuleNotFoundError(
                f"{url} needs boto3, which is not installed: pip install 'afunet-service[s3]'"
                " (every image has it)"
            ) from exc
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            # SigV4 everywhere, presigned URLs included (botocore would presign with the
            # deprecated SigV2, which newer AWS regions and some S3-compatible servers refuse).
            signature_version="s3v4",
            # Enough connections for the multipart threads of a few puts at once.
            max_pool_connections=4 * MAX_UPLOAD_CONCURRENCY,
        )
        session = boto3.session.Session()
        # botocore reads AWS_DEFAULT_REGION; AWS_REGION is the name the other AWS SDKs and
        # runtimes use, so it is honoured too (None: botocore's own resolution).
        region = os.environ.get("AWS_REGION") or None
        client = session.client("s3", region_name=region, config=config)
        store = cls(client, bucket, prefix, transfer_config=transfer_config)
        log.info("blob store %s (endpoint %s)", store.url, client.meta.endpoint_url)
        return store

    # --- errors -------------------------------------------------------------------------

    def _fail(self, exc: BaseException, name: str | None) -> NoReturn:
        """Raise the store error that ``exc`` (from boto3 or botocore) means."""
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # A missing bucket is a 404 too, but a store fault: every name is missing.
            missing = code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket")
            if name is not None and missing:
                raise BlobNotFound(f"no blob {name!r} in {self.url}") from exc
            if code in {"NoSuchBucket", "404"}:
                # HEAD answers carry no body: a bare 404 from head_bucket is the bucket.
                cause = f"bucket {self.bucket!r} does not exist ({code})"
            elif code in {"AccessDenied", "403"}:
                cause = f"access denied to bucket {self.bucket!r} ({code}): check the credentials"
            else:
                message = error.get("Message") or code or f"HTTP {status}"
                cause = f"{code}: {message}" if code and code != message else message
        else:
            cause = str(exc) or type(exc).__name__
        raise StoreUnavailable(f"blob store {self.url}: {cause}") from exc

    @contextlib.contextmanager
    def _translated(self, name: str | None = None) -> Iterator[None]:
        """Turn every boto3/botocore error raised in the block into
        :class:`StoreUnavailable`, or :class:`BlobNotFound` for a missing ``name``
        (botocore wraps refused and dropped connections and timeouts in its own errors)."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            self._fail(exc, name)

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # --- the interface ------------------------------------------------------------------

    def put(self, name: str, source: BinaryIO | bytes) -> int:
        """Upload ``source`` in one PUT, or as a multipart upload above the threshold. An
        error reading ``source`` (a client gone mid-upload) is the caller's and propagates
        as it is; s3transfer aborts the multipart upload then, and the old object stays."""
        reader = _CountingReader(io.BytesIO(source) if isinstance(source, bytes) else source)
        with self._translated():
            self._client.upload_fileobj(
                reader, self.bucket, self._key(name), Config=self.transfer_config
            )
        return reader.count

    def open(self, name: str) -> BinaryIO:
        with self._translated(name):
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
        return io.BufferedReader(_Body(self, name, response["Body"]))

    def exists(self, name: str) -> bool:
        """HEAD the object. A HEAD answer has no body to tell a missing bucket from a
        missing object, so on a missing bucket this is False: :meth:`check` tells."""
        try:
            with self._translated(name):
                self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except BlobNotFound:
            return False
        return True

    def delete(self, names: Iterable[str]) -> None:
        keys = [self._key(name) for name in names]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            with self._translated():
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StoreUnavailable(
                    f"blob store {self.url}: {len(errors)} of {len(batch)} deletes failed,"
                    f" first {first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                )

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        # Listing is lazy, page by page: an error on a later page surfaces mid-iteration,
        # so the translation wraps each page fetch, not just the first request.
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)))
        while True:
            with self._translated():
                page = next(pages, None)
            if page is None:
                return
            for item in page.get("Contents", []):
                yield BlobInfo(
                    name=item["Key"][len(self.prefix) :],
                    size=int(item["Size"]),
                    modified=item["LastModified"].timestamp(),
                )

    def presign(self, name: str, expires_seconds: int) -> str | None:
        """A GET URL signed with the store's credentials (computed locally, no request),
        valid ``expires_seconds``, at most :data:`MAX_PRESIGN_SECONDS`: S3 refuses longer
        SigV4 URLs outright, so longer is shortened. A URL signed with temporary
        credentials (a role, web identity) dies with them, whatever it says."""
        with self._translated(name):
            url = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(name)},
                ExpiresIn=max(1, min(int(expires_seconds), MAX_PRESIGN_SECONDS)),
            )
        return str(url)

    def check(self) -> None:
        """HEAD the bucket: it exists and these credentials may use it."""
        with self._translated():
            self._client.head_bucket(Bucket=self.bucket)

    def apply_lifecycle(self, ttl_seconds: float) -> builtins.list[dict[str, Any]]:
        """Install :func:`lifecycle_rules` for this store's prefix in the bucket's lifecycle
        configuration, keeping every other rule: S3 replaces the whole configuration on
        each put, so the current one is read and merged by rule ID (rerunning replaces
        this store's rules, so a changed TTL takes effect). Returns the rules in force."""
        from botocore.exceptions import ClientError

        ours = lifecycle_rules(ttl_seconds, self.prefix)
        ids = {rule["ID"] for rule in ours}
        with self._translated():
            try:
                current = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                    raise
                current = {}
        others = [rule for rule in current.get("Rules", []) if rule.get("ID") not in ids]
        rules = others + ours
        with self._translated():
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
            )
        log.info("lifecycle rules %s set on bucket %s", sorted(ids), self.bucket)
        return rules

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
