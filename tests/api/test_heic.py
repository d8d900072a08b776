"""HEIC brackets (what an iPhone shoots) through the API: admitted from their headers,
exposures from their EXIF, merged end to end by the weight-free classical model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings
from service.imaging import decode_exr
from service.quality.synth import make_scene
from service.worker.models import load_models
from tests.factories import REPO, exposure_files, tiff_file
from tests.imaging.builders import exif_blob, heic_bytes, patch_heif_extents, patch_heif_sps
from tests.worker.harness import api_server, wait_for, worker_thread

#: The bracket's exposure times, short to long: 0, 2 and 4 stops above the shortest.
EXPOSURE_TIMES = ((1, 400), (1, 100), (1, 25))


@pytest.fixture
def classical_settings(service_settings: Settings, tmp_path: Path) -> Settings:
    """``service_settings`` with a model repository holding only the classical model."""
    folder = tmp_path / "model_repo" / "classical"
    folder.mkdir(parents=True)
    config = REPO / "model_repo" / "classical" / "config.yaml"
    (folder / "config.yaml").write_bytes(config.read_bytes())
    return service_settings.model_copy(update={"model_repo": folder.parent})


@pytest.fixture
def client(classical_settings: Settings) -> Iterator[httpx.Client]:
    with api_server(classical_settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def heic_bracket(bits: int) -> tuple[list[tuple[str, bytes]], list[np.ndarray]]:
    """A synthetic scene's three frames as ``bits``-bit HEIC uploads with EXIF exposure
    times, and the 16-bit frames the service must decode them to."""
    scene = make_scene(3, 48, 64, ev_step=2.0)
    uploads, widened = [], []
    for i, (frame, time) in enumerate(zip(scene.frames, EXPOSURE_TIMES, strict=True)):
        levels = frame >> (16 - bits)
        if bits == 8:
            levels = levels.astype(np.uint8)
            widened.append(levels.astype(np.uint16) * np.uint16(257))
        else:
            widened.append((levels << (16 - bits)) | (levels >> (2 * bits - 16)))
        data = heic_bytes(levels, bits=bits, exif=exif_blob(exposure_time=time))
        uploads.append((f"IMG_000{i}.HEIC", data))
    return uploads, widened


def run_job(client: httpx.Client, uploads: list[tuple[str, bytes]], **fields: Any) -> dict:
    response = client.post("/v1/jobs", files=exposure_files(uploads), data=fields)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def final() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(final, 120, f"job {job_id} to finish", interval=0.1)


@pytest.mark.parametrize("bits", [8, 10])
def test_heic_bracket_with_exif_exposures_succeeds_like_its_16bit_tiffs(
    client: httpx.Client, classical_settings: Settings, bits: int
) -> None:
    """The HEIC job equals the job on 16-bit TIFFs of the decoded frames with the same
    exposure times typed in: HEIC adds a decoder, nothing else, and its EXIF gives the
    stops."""
    uploads, widened = heic_bracket(bits)
    shuffled = [uploads[2], uploads[0], uploads[1]]  # EXIF sorts them short to long
    tiffs = [(f"{i}.tif", tiff_file(frame)) for i, frame in enumerate(widened)]
    with worker_thread(classical_settings, load_models(classical_settings)):
        heic = run_job(client, shuffled, model="classical")
        tiff = run_job(client, tiffs, model="classical", exposure_times="0.0025,0.01,0.04")

    assert heic["status"] == "succeeded", heic
    assert tiff["status"] == "succeeded", tiff
    assert heic["model"] == "classical"
    assert (heic["width"], heic["height"]) == (64, 48)
    assert heic["exposure_values"] == pytest.approx([0.0, 2.0, 4.0])
    assert heic["exposure_values"] == tiff["exposure_values"]
    params = {"format": "exr", "dtype": "float32"}
    result = decode_exr(client.get(heic["result_url"], params=params).content)
    assert result.shape == (48, 64, 3) and np.isfinite(result).all()
    np.testing.assert_array_equal(
        result, decode_exr(client.get(tiff["result_url"], params=params).content)
    )


def _error(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_truncated_heic_is_415_naming_it(client: httpx.Client) -> None:
    uploads, _ = heic_bracket(10)
    name, data = uploads[1]
    uploads[1] = (name, data[: len(data) // 2])
    response = client.post("/v1/jobs", files=exposure_files(uploads))
    assert response.status_code == 415, response.text
    assert _error(response)["code"] == "unsupported_image"
    assert _error(response)["message"].startswith(f"{name}: truncated HEIF")


def test_heic_bomb_is_413_from_its_header(client: httpx.Client) -> None:
    uploads, _ = heic_bracket(8)
    name, data = uploads[0]
    uploads[0] = (name, patch_heif_extents(data, 40_000, 40_000))
    response = client.post("/v1/jobs", files=exposure_files(uploads))
    assert response.status_code == 413, response.text
    assert _error(response)["code"] == "image_too_large"
    assert name in _error(response)["message"]
    assert "1600000000 pixels" in _error(response)["message"]


def test_heic_with_a_huge_sps_behind_a_small_ispe_is_413(client: httpx.Client) -> None:
    """The ``ispe`` claims 64 x 64; the HEVC SPS codes 20000 x 20000, what libheif would
    decode on the worker."""
    uploads, _ = heic_bracket(10)
    name, data = uploads[2]
    uploads[2] = (name, patch_heif_sps(data, 20_000, 20_000))
    response = client.post("/v1/jobs", files=exposure_files(uploads))
    assert response.status_code == 413, response.text
    assert _error(response)["code"] == "image_too_large"
    assert _error(response)["message"].startswith(f"{name}: image is 64x48, ")
    assert "coded image of 400000000 pixels" in _error(response)["message"]


def test_heic_with_a_garbage_sps_is_415_naming_it(client: httpx.Client) -> None:
    uploads, _ = heic_bracket(8)
    name, data = uploads[0]
    sps = data.index(b"\x42\x01", data.index(b"hvcC"))  # the SPS NAL unit's header
    uploads[0] = (name, data[: sps + 2] + bytes(30) + data[sps + 32 :])
    response = client.post("/v1/jobs", files=exposure_files(uploads))
    assert response.status_code == 415, response.text
    assert _error(response)["code"] == "unsupported_image"
    assert _error(response)["message"] == (
        f"{name}: corrupt HEIF: an exp-Golomb code in the SPS is longer than 32 bits"
    )
