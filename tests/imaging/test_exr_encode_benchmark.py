"""benchmarks.exr_encode runs end to end and its exactness verdicts match the codecs' docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.exr_encode import main
from service.imaging.exr import (
    LOSSLESS_COMPRESSIONS,
    ExrCompression,
    exr_threads,
    set_exr_threads,
)


def test_a_small_run_measures_every_case_and_finds_the_lossless_ones_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = exr_threads()
    try:
        code = main(
            [
                "--size",
                "48x40",
                "--repeats",
                "1",
                "--threads",
                "2",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
    finally:
        set_exr_threads(before)
    assert code == 0
    cases = json.loads((tmp_path / "r.json").read_text())
    compressions = list(ExrCompression)
    assert len(cases) == len(compressions) * 2 * 2  # dtypes x thread counts {0, 2}
    exact = {(c["dtype"], c["compression"]): c["lossless"] for c in cases}
    for compression in compressions:
        if compression in LOSSLESS_COMPRESSIONS:
            assert exact["float32", compression.value] and exact["float16", compression.value]
    for lossy in (ExrCompression.DWAA, ExrCompression.DWAB):
        assert not exact["float32", lossy.value] and not exact["float16", lossy.value]
    assert not exact["float32", ExrCompression.PXR24.value]
    table = capsys.readouterr().out
    assert "| float32 | none | yes | 0 |" in table
