"""The blob store: uploads and results live here, never in Redis (ARCHITECTURE §5b).

:func:`open_store` picks the backend from ``HDR_STORAGE_URL``'s scheme through a table;
the S3 backend is imported only when asked for, so a file-store deployment needs no
boto3.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from service.storage.base import (
    JOBS_PREFIX,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    StoreUnavailable,
    input_name,
    job_prefix,
    result_name,
)

#: Scheme -> (module, class) whose ``from_url(url)`` opens that backend.
BACKENDS: Final = {
    "file": ("service.storage.file", "FileStore"),
    "s3": ("service.storage.s3", "S3Store"),
}


def open_store(url: str) -> BlobStore:
    """The blob store at ``url`` (``file:///dir`` or ``s3://bucket/prefix``)."""
    scheme = urlsplit(url).scheme
    if scheme not in BACKENDS:
        raise ValueError(
            f"HDR_STORAGE_URL: unsupported scheme {scheme or '(none)'!r}; use"
            f" {' or '.join(f'{s}://' for s in BACKENDS)}"
        )
    module_name, class_name = BACKENDS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"HDR_STORAGE_URL: the {scheme}:// backend cannot be loaded ({exc}); for S3"
            " install the s3 extra: pip install 'afunet-service[s3]'"
        ) from exc
    from_url: Callable[[str], BlobStore] = getattr(module, class_name).from_url
    return from_url(url)


__all__ = [
    "BACKENDS",
    "JOBS_PREFIX",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "StoreUnavailable",
    "input_name",
    "job_prefix",
    "open_store",
    "result_name",
]
