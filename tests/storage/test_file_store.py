"""The file:// blob store on a temporary directory: atomic writes, names, listing, faults."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from service.storage import (
    BlobNotFound,
    StoreUnavailable,
    input_name,
    job_prefix,
    open_store,
    result_name,
)
from service.storage.file import FileStore

JOB = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "blobs", fsync=False)


def test_open_store_picks_the_file_backend_by_scheme(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/blobs")
    assert isinstance(store, FileStore)
    assert store.root == tmp_path / "blobs"


@pytest.mark.parametrize("url", ["ftp://host/x", "blobs", "file://relative/dir", "file:"])
def test_open_store_refuses_unknown_schemes_and_relative_paths(url: str) -> None:
    with pytest.raises(ValueError, match=r"HDR_STORAGE_URL|file store URL"):
        open_store(url)


def test_put_streams_a_file_and_reads_it_back(store: FileStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, not a multiple of one
    assert store.put(input_name(JOB, 0), io.BytesIO(data)) == len(data)
    assert store.read(input_name(JOB, 0)) == data
    assert b"".join(store.iter_chunks(input_name(JOB, 0), 1 << 20)) == data
    assert store.exists(input_name(JOB, 0))
    assert not store.exists(input_name(JOB, 1))


def test_put_replaces_an_object_atomically_and_leaves_no_temporary_file(
    store: FileStore,
) -> None:
    name = result_name(JOB)
    store.put(name, b"old" * 1000)
    seen: list[bytes] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(store.read(name))

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(50):
        store.put(name, b"new" * 200_000)
        store.put(name, b"old" * 1000)
    stop.set()
    thread.join()
    assert seen and set(seen) <= {b"old" * 1000, b"new" * 200_000}  # never a part
    assert [p.name for p in (store.root / job_prefix(JOB)).iterdir()] == ["result-exr-float32"]


def test_a_failed_write_keeps_the_old_object_and_removes_its_temporary_file(
    store: FileStore,
) -> None:
    name = input_name(JOB, 0)
    store.put(name, b"complete")

    class Broken(io.RawIOBase):
        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            raise OSError(5, "Input/output error")

    with pytest.raises(StoreUnavailable, match="Input/output error"):
        store.put(name, Broken())  # type: ignore[arg-type]
    assert store.read(name) == b"complete"
    assert [p.name for p in (store.root / job_prefix(JOB)).iterdir()] == ["input-0"]


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        f"jobs/{JOB}/../../x",
        f"jobs/{JOB}/input-0/../../{OTHER}/input-0",
        "jobs/not-a-job-id/input-0",
        f"jobs/{JOB}/notes.txt",
        f"/jobs/{JOB}/input-0",
    ],
)
def test_names_not_built_by_the_service_are_refused(store: FileStore, name: str) -> None:
    with pytest.raises(ValueError, match="not a blob name"):
        store.put(name, b"x")
    with pytest.raises(ValueError, match="not a blob name"):
        store.open(name)
    assert not (store.root.parent / "etc").exists()


def test_reading_a_missing_blob_is_blob_not_found(store: FileStore) -> None:
    with pytest.raises(BlobNotFound, match=JOB):
        store.read(input_name(JOB, 2))
    with pytest.raises(BlobNotFound):
        store.iter_chunks(result_name(JOB, "png"))


def test_list_and_delete_prefix_cover_one_job_only(store: FileStore) -> None:
    for job in (JOB, OTHER):
        for i in range(3):
            store.put(input_name(job, i), b"x" * (i + 1))
    listed = {info.name: info.size for info in store.list(job_prefix(JOB))}
    assert listed == {input_name(JOB, i): i + 1 for i in range(3)}
    assert len(list(store.list("jobs/"))) == 6
    assert store.delete_prefix(job_prefix(JOB)) == 3
    assert not (store.root / job_prefix(JOB)).exists()
    assert [info.name for info in store.list("jobs/")] == [input_name(OTHER, i) for i in range(3)]
    store.delete([input_name(OTHER, 0), input_name(JOB, 0)])  # a missing one is no error
    assert len(list(store.list("jobs/"))) == 2


def test_a_store_on_a_regular_file_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = FileStore(blocker, fsync=False)
    with pytest.raises(StoreUnavailable):
        store.check()
    with pytest.raises(StoreUnavailable, match="cannot write"):
        store.put(input_name(JOB, 0), b"x")


def test_fsync_writes_are_read_back(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=True)
    store.put(result_name(JOB, "png"), io.BytesIO(b"png bytes"))
    assert store.read(result_name(JOB, "png")) == b"png bytes"
