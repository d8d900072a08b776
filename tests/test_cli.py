"""``hdr-service infer`` end to end on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import OpenEXR
import pytest
from PIL import Image

from service.cli import main
from service.imaging import decode_exr, decode_radiance
from tests.factories import GOLDEN_CHECKPOINT, GOLDEN_SEED0, bracket_frames, write_scene

EXPECTED = np.load(GOLDEN_SEED0 / "model_output.npy")[0].transpose(1, 2, 0)


def test_infer_on_golden_scene_writes_float32_exr_equal_to_official(tmp_path: Path) -> None:
    out = tmp_path / "golden.exr"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "infer",
            str(GOLDEN_SEED0),
            "--checkpoint",
            str(GOLDEN_CHECKPOINT),
            "--output",
            str(out),
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    with OpenEXR.File(str(out)) as exr:
        channels = exr.channels()
        assert {"R", "G", "B"} <= set(channels) or "RGB" in channels
    hdr = decode_exr(out.read_bytes())
    assert hdr.dtype == np.float32 and hdr.shape == (72, 100, 3)
    assert np.abs(hdr - EXPECTED).max() <= 1e-5


def test_infer_writes_radiance_and_png_preview(tmp_path: Path) -> None:
    for name in ("out.hdr", "out.png"):
        code = main(
            [
                "infer",
                str(GOLDEN_SEED0),
                "--checkpoint",
                str(GOLDEN_CHECKPOINT),
                "-o",
                str(tmp_path / name),
            ]
        )
        assert code == 0
    radiance = decode_radiance((tmp_path / "out.hdr").read_bytes())
    assert radiance.shape == (72, 100, 3)
    assert np.abs(radiance - EXPECTED).max() <= 0.01 * EXPECTED.max()
    with Image.open(tmp_path / "out.png") as preview:
        assert preview.mode == "RGB" and preview.size == (100, 72)


def test_infer_from_file_list_with_evs_and_tiles(tmp_path: Path) -> None:
    frames = bracket_frames(40, 72, evs=(0, 2, 4))
    files = []
    for i, frame in enumerate(frames):
        files.append(tmp_path / f"f{i}.png")
        Image.fromarray((frame >> 8).astype(np.uint8)).save(files[-1])
    out = tmp_path / "tiled.exr"
    code = main(
        [
            "infer",
            "--exposures",
            *map(str, files),
            "--ev",
            "0,2,4",
            "--checkpoint",
            str(GOLDEN_CHECKPOINT),
            "-o",
            str(out),
            "--tile-size",
            "32",
            "--tile-overlap",
            "8",
            "--dtype",
            "float16",
        ]
    )
    assert code == 0
    assert decode_exr(out.read_bytes()).shape == (40, 72, 3)


def test_ev_is_shifted_to_the_shortest_as_in_a_scene_file_that_starts_at_zero(
    tmp_path: Path,
) -> None:
    """``--ev=-2,0,2`` and ``--ev 0,2,4`` give identical files, equal to a scene whose
    exposure.txt holds 0 2 4 (a scene's file is read verbatim, as the official code does)."""
    frames = sorted(GOLDEN_SEED0.glob("input_*.tif"))
    scene = tmp_path / "scene"
    scene.mkdir()
    for frame in frames:
        (scene / frame.name).write_bytes(frame.read_bytes())
    (scene / "exposure.txt").write_text("0\n2\n4\n")
    runs = {
        "negative.exr": ["--exposures", *map(str, frames), "--ev=-2,0,2"],
        "zero.exr": ["--exposures", *map(str, frames), "--ev", "0,2,4"],
        "scene.exr": [str(scene)],
    }
    for name, source in runs.items():
        argv = [
            "infer",
            *source,
            "--checkpoint",
            str(GOLDEN_CHECKPOINT),
            "-o",
            str(tmp_path / name),
        ]
        assert main(argv) == 0
    results = [(tmp_path / name).read_bytes() for name in runs]
    assert results[0] == results[1] == results[2]
    # Unshifted, -2,0,2 would have given the official output for the golden file's -2 0 2.
    assert np.abs(decode_exr(results[0]) - EXPECTED).max() > 0.1


def test_no_tile_equals_default_for_small_frame(tmp_path: Path) -> None:
    for flag, name in (([], "a.exr"), (["--no-tile"], "b.exr")):
        assert (
            main(
                [
                    "infer",
                    str(GOLDEN_SEED0),
                    "--checkpoint",
                    str(GOLDEN_CHECKPOINT),
                    "-o",
                    str(tmp_path / name),
                    *flag,
                ]
            )
            == 0
        )
    a = decode_exr((tmp_path / "a.exr").read_bytes())
    b = decode_exr((tmp_path / "b.exr").read_bytes())
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{scene}"], "expected 3 exposures, found 2"),
        (["--exposures", "a", "b", "c"], "--exposures needs --ev"),
        (["--exposures", "a", "b", "c", "--ev", "0,1_0,2_0"], "--ev: '1_0' is not a plain"),
        (["--exposures", "a", "b", "c", "--ev=-2,nan,2"], "--ev: 'nan' is not a plain"),
        ([], "give a scene folder"),
        (["{golden}", "--tile-size", "60"], "multiple of 8"),
        (["{golden}", "--output-format-typo"], None),
    ],
)
def test_bad_invocations_fail_with_a_message(tmp_path, capsys, args, message) -> None:
    scene = write_scene(tmp_path / "two", bracket_frames(16, 16)[:2], (0, 2, 4))
    argv = [
        "infer",
        *[a.format(scene=scene, golden=GOLDEN_SEED0) for a in args],
        "--checkpoint",
        str(GOLDEN_CHECKPOINT),
        "-o",
        str(tmp_path / "x.exr"),
    ]
    if message is None:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        return
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_output_extension_is_refused_before_inference(tmp_path, capsys) -> None:
    code = main(
        [
            "infer",
            str(GOLDEN_SEED0),
            "--checkpoint",
            str(GOLDEN_CHECKPOINT),
            "-o",
            str(tmp_path / "x.tiff"),
        ]
    )
    assert code == 2
    assert ".exr" in capsys.readouterr().err


def test_missing_checkpoint_and_empty_model_repo_are_named(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HDR_MODEL_REPO", str(tmp_path / "repo"))
    assert main(["infer", str(GOLDEN_SEED0), "-o", str(tmp_path / "x.exr")]) == 2
    assert "model.pth" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["api", "worker"])
def test_api_and_worker_refuse_to_start_without_a_blob_store(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HDR_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("HDR_STORAGE_URL", raising=False)
    assert main([command]) != 0
    message = capsys.readouterr().err
    assert "HDR_STORAGE_URL is not set" in message and "serve" in message
