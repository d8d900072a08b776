"""bf16 on CPU: only where the CPU computes it natively, and only past the parity gate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.config import Settings
from service.engines.parity import FP16_MIN_PSNR_MU_DB
from service.engines.registry import load_model
from service.engines.runtime import native_bf16_cpu
from service.engines.torch_engine import resolve_precision
from service.errors import EngineUnavailable
from tests.factories import GOLDEN_CHECKPOINT

NATIVE_BF16 = native_bf16_cpu()


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
    return path


def test_avx512_bf16_or_amx_flags_mean_native_bf16(tmp_path: Path) -> None:
    assert native_bf16_cpu(_cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512_bf16"))
    assert native_bf16_cpu(_cpuinfo(tmp_path, "fpu avx512f amx_tile amx_bf16"))


def test_avx2_or_plain_avx512_is_not_native_bf16(tmp_path: Path) -> None:
    assert not native_bf16_cpu(_cpuinfo(tmp_path, "fpu sse2 avx2 fma"))
    assert not native_bf16_cpu(_cpuinfo(tmp_path, "fpu avx512f avx512bw avx512_vnni"))
    assert not native_bf16_cpu(tmp_path / "absent")


def test_bf16_is_refused_on_a_cpu_without_native_bf16() -> None:
    with pytest.raises(EngineUnavailable, match="AVX-512 BF16 or AMX"):
        resolve_precision("bf16", torch.device("cpu"), native_bf16=False)
    assert resolve_precision("bf16", torch.device("cpu"), native_bf16=True) == "bf16"


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has neither AVX-512 BF16 nor AMX")
def test_bf16_on_a_native_bf16_cpu_serves_after_the_parity_check(tmp_path: Path) -> None:
    settings = Settings(model_repo=tmp_path, device="cpu", engine="torch", precision="bf16")
    served = load_model(settings, "afunet", GOLDEN_CHECKPOINT)
    engine = served.engine
    assert engine.precision == "bf16" and engine.device == "cpu"
    score = getattr(engine, "parity_db", None)
    assert score is not None and score >= FP16_MIN_PSNR_MU_DB
    assert served.describe()["precision_note"] == f"bf16 parity {score:.1f} dB PSNR-mu vs fp32"
