"""``service.client`` and ``hdr-service submit`` against a real ``hdr-service serve``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from service.client import Client, ClientError, JobFailed, encode_array
from service.imaging import decode, decode_exr
from service.queue import JobState
from tests.client.conftest import Served
from tests.factories import GOLDEN_SEED0, REPO, golden_output

pytestmark = pytest.mark.slow

GOLDEN_FILES = sorted(GOLDEN_SEED0.glob("input_*.tif"))
#: What the golden bracket's EVs (-2, 0, 2) become: stops relative to the shortest.
SHIFTED_EVS = (0.0, 2.0, 4.0)


def _submit_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``hdr-service submit`` as a user runs it: a process of its own, no HDR_* settings."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HDR_", "AFUNET_"))}
    return subprocess.run(
        [sys.executable, "-m", "service", "submit", *args],
        cwd=REPO,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_client_runs_the_golden_bracket_to_the_golden_result(served: Served) -> None:
    seen: list[tuple[int, int]] = []
    with Client(served.url) as client:
        job = client.submit(GOLDEN_FILES, evs=(-2, 0, 2), tile_size=0)
        assert job.status in (JobState.QUEUED, JobState.RUNNING)
        final = job.wait(progress=lambda done, total: seen.append((done, total)), poll=0.1)
        exr = job.result()
        half = job.result("exr", dtype="float16")

    assert final.status is JobState.SUCCEEDED and final.exposure_values == list(SHIFTED_EVS)
    assert (final.width, final.height) == (100, 72)
    assert seen[-1] == (1, 1), seen  # untiled: one tile
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    expected = golden_output(SHIFTED_EVS)
    assert np.abs(decode_exr(exr) - expected).max() <= 1e-4
    assert np.abs(decode_exr(half) - expected).max() <= 1e-3 * max(1.0, expected.max())


def test_arrays_and_files_give_the_same_result(served: Served, tmp_path: Path) -> None:
    frames = [tifffile.imread(path) for path in GOLDEN_FILES]
    with Client(served.url) as client:
        from_arrays = client.submit(frames, evs="-2,0,2", tile_size=0)
        from_bytes = client.submit([p.read_bytes() for p in GOLDEN_FILES], evs=[-2, 0, 2])
        from_arrays.wait(poll=0.1)
        saved = from_arrays.save(tmp_path / "arrays.exr")
        from_bytes.wait(poll=0.1)

    expected = golden_output(SHIFTED_EVS)
    assert np.abs(decode_exr(saved.read_bytes()) - expected).max() <= 1e-4
    assert from_bytes.info.progress.tiles_total > 1  # the repository's 32-pixel tiles


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_arrays_are_uploaded_losslessly_at_their_bit_depth(dtype: type) -> None:
    top = np.iinfo(dtype).max
    frame = np.random.default_rng(1).integers(0, top, (12, 20, 3), endpoint=True).astype(dtype)
    extension, data = encode_array(frame)
    decoded = decode(data)
    assert extension == ("png" if dtype is np.uint8 else "tif")
    assert decoded.pixels.dtype == dtype and np.array_equal(decoded.pixels, frame)


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (np.zeros((4, 4), np.uint8), "HxWx3"),
        (np.zeros((4, 4, 4), np.uint8), "HxWx3"),
        (np.zeros((4, 4, 3), np.float32), "uint8 or uint16"),
    ],
)
def test_arrays_the_api_cannot_take_are_refused_before_sending(
    frame: np.ndarray, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_array(frame)


def test_refusals_carry_the_status_code_and_message_of_the_api(served: Served) -> None:
    files = [p.read_bytes() for p in GOLDEN_FILES]
    with Client(served.url) as client:
        with pytest.raises(ClientError) as not_an_image:
            client.submit([files[0], b"just some text", files[2]], evs=(-2, 0, 2))
        with pytest.raises(ClientError) as two_files:
            client.submit(files[:2], evs=(0, 2))
        with pytest.raises(ClientError) as unknown:
            client.job("0" * 32)

    assert (not_an_image.value.status, not_an_image.value.code) == (415, "unsupported_image")
    assert "exposure-2" in not_an_image.value.message
    assert (two_files.value.status, two_files.value.code) == (422, "invalid_exposure_set")
    assert "3" in two_files.value.message
    assert (unknown.value.status, unknown.value.code) == (404, "not_found")
    assert str(unknown.value).startswith("404 not_found: ")


def test_a_cancelled_job_fails_its_wait(served: Served) -> None:
    with Client(served.url) as client:
        job = client.submit(GOLDEN_FILES, evs=(-2, 0, 2))
        job.cancel()  # at once: a 100x72 frame in 32-pixel tiles takes seconds on a CPU
        with pytest.raises(JobFailed) as failed:
            job.wait(poll=0.1, timeout=60)
        with pytest.raises(ClientError) as no_result:
            job.result()

    assert failed.value.job.status is JobState.CANCELLED
    assert failed.value.code == "job_cancelled"
    assert no_result.value.status == 409


def test_submit_command_writes_the_golden_exr_with_a_progress_bar(
    served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "out.exr"
    paths = [str(p) for p in GOLDEN_FILES]
    done = _submit_command(*paths, "--ev=-2,0,2", "-o", str(out), "--progress", "--url", served.url)
    assert done.returncode == 0, done.stderr
    with Client(served.url) as client:  # the same request through the library
        job = client.submit(GOLDEN_FILES, evs=(-2, 0, 2))
        job.wait(poll=0.1)
        direct = decode_exr(job.result())

    bars = re.findall(r"(\d+)/(\d+) \[", done.stderr)
    assert bars, done.stderr
    assert bars[-1][0] == bars[-1][1] == str(job.info.progress.tiles_total)
    assert job.info.progress.tiles_total > 1
    assert done.stdout.startswith(f"wrote {out} (100x72, ")
    assert np.array_equal(decode_exr(out.read_bytes()), direct)


def test_submit_command_prints_one_line_on_a_refusal(served: Served, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    paths = [str(GOLDEN_FILES[0]), str(text), str(GOLDEN_FILES[2])]
    done = _submit_command(
        *paths, "--ev=-2,0,2", "-o", str(tmp_path / "x.exr"), AFUNET_URL=served.url
    )

    assert done.returncode == 2
    assert done.stderr.startswith("hdr-service submit: error: 415 unsupported_image: ")
    assert "notes.txt" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "x.exr").exists()


def test_submit_command_refuses_an_output_it_cannot_name_a_format_for(tmp_path: Path) -> None:
    paths = [str(p) for p in GOLDEN_FILES]
    done = _submit_command(*paths, "-o", str(tmp_path / "out.jpg"), "--url", "http://127.0.0.1:9")

    assert done.returncode == 2
    assert "out.jpg" in done.stderr and ".exr" in done.stderr and done.stderr.count("\n") == 1


def test_submit_command_names_an_unreachable_service(tmp_path: Path) -> None:
    paths = [str(p) for p in GOLDEN_FILES]
    done = _submit_command(*paths, "-o", str(tmp_path / "out.exr"), "--url", "http://127.0.0.1:9")

    assert done.returncode == 1
    assert done.stderr.startswith("hdr-service submit: error: unreachable: cannot reach ")
    assert done.stderr.count("\n") == 1
