"""The issue's floor: classical beats MergeDebevec and the reference frame by 5 dB PSNR-mu."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("cv2", reason="the benchmark's MergeDebevec needs opencv (dev extra)")

from benchmarks.quality import main


def test_classical_gains_5_db_over_both_baselines_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "quality.json"
    code = main(["--scenes", "8", "--size", "192x128", "--min-gain", "5", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| classical |" in printed and "| OpenCV MergeDebevec |" in printed
    reports = json.loads(out.read_text())
    classical = reports["classical"]["mean"]["psnr_mu"]
    assert classical >= reports["OpenCV MergeDebevec"]["mean"]["psnr_mu"] + 5
    assert classical >= reports["reference frame alone"]["mean"]["psnr_mu"] + 5
