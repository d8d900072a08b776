"""What ``hdr-service infer`` loads at start-up: only what the command uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.cpus import usable_cpus
from tests.factories import GOLDEN_CHECKPOINT, GOLDEN_SEED0

#: Modules of the serving side that an offline inference must never import.
NOT_FOR_INFER = (
    "onnx",
    "onnxruntime",
    "onnxscript",
    "tensorrt",
    "fastapi",
    "starlette",
    "uvicorn",
    "redis",
    "prometheus_client",
    "boto3",
    "botocore",
    "service.api",
    "service.queue",
    "service.worker",
    "service.storage",
    "service.metrics",
    "service.engines.onnx_export",
    "service.engines.tensorrt_engine",
)

_PROBE = """
import json, os, sys
from service.cli import main
rc = main(sys.argv[1:])
import torch
print(json.dumps({"modules": sorted(sys.modules), "threads": torch.get_num_threads(),
                  "wait_policy": os.environ.get("OMP_WAIT_POLICY")}))
sys.exit(rc)
"""


def test_infer_imports_no_serving_module_and_sizes_threads_to_the_usable_cpus(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            "infer",
            str(GOLDEN_SEED0),
            "--checkpoint",
            str(GOLDEN_CHECKPOINT),
            "--no-tile",
            "--output",
            str(tmp_path / "out.exr"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = set(report["modules"])
    leaked = sorted(
        name
        for name in loaded
        if any(name == banned or name.startswith(banned + ".") for banned in NOT_FOR_INFER)
    )
    assert not leaked, f"infer imported {leaked}"
    assert "service.engines.torch_engine" in loaded  # the probe ran a real inference
    assert report["threads"] == usable_cpus()
    assert report["wait_policy"] == "PASSIVE"
