"""The whole ``hdr-service infer`` process against the official AFUNet code's forward.

    python -m benchmarks.infer_process --checkpoint CKPT --sizes 100x72,512x512 \
        --official /path/to/AFUNet --runs 3

What a user of the official repository waits for is its model's forward; what a user of
this service waits for is a whole ``hdr-service infer`` process: interpreter, imports,
checkpoint, engine set-up, reading the TIFFs, inference and writing the EXR. Each round
runs, one after the other on the same synthetic scene (Kalantari layout):

* ``infer``: ``python -m service infer SCENE --no-tile --dtype float32`` as a user runs
  it; its wall time, its CPU time (``getrusage`` of the child), and the inference time it
  prints itself. Their difference is the fixed cost of a run;
* ``official`` (with ``--official DIR``, a checkout of github.com/eezkni/AFUNet): the
  official ``models.AFUNet`` imported from there at run time, loaded with the same
  checkpoint, timed on the same model input after one warm-up forward (model only,
  ``torch.no_grad``, eval mode), and its output compared with ours;
* ``official-style``: ``benchmarks.official_style``, our re-implementation of how the
  official code moves data (the baseline of ``python -m benchmarks.engines``), timed the
  same way.

Cases alternate round by round, so a machine whose load drifts affects all of them alike;
the ratios of one run are what to quote. All children inherit the OpenMP settings that
``hdr-service`` gives itself (``engines.runtime.tune_cpu_threads``), so a ratio measures
the code, not a thread policy. The official code imports ``timm`` only for three helpers
(``DropPath``, ``to_2tuple``, ``trunc_normal_``); where timm is not installed (it needs
torchvision), the child provides equivalents of those three, which at inference do
nothing (drop path is the identity in eval mode) or only initialise weights that the
checkpoint then replaces. ``einops`` must be installed.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.child import REPO, ChildFailed, run_in_child
from service.commands.argtypes import frame_sizes

#: The ``infer`` line that reports the inference time, e.g. ``..., 1 tile(s), 9.21 s, ...``.
_INFER_SECONDS = re.compile(r"tile\(s\), ([0-9.]+) s,")
#: The official test.py settings; ``img_size`` only sizes the buffers its checkpoints hold.
OFFICIAL_ARGS: dict[str, Any] = {
    "img_size": (40, 40),
    "in_chans": 18,
    "embed_dim": 72,
    "depths": [5, 5, 5, 5],
    "num_heads": [4, 4, 4, 4],
    "window_size": 8,
    "mlp_ratio": 2,
}


@dataclass
class SizeResult:
    """Every measurement of one frame size, seconds per run."""

    width: int
    height: int
    process_s: list[float] = field(default_factory=list)
    process_cpu_s: list[float] = field(default_factory=list)
    inference_s: list[float] = field(default_factory=list)
    baselines: dict[str, list[float]] = field(default_factory=dict)
    """Forward seconds of ``official`` and ``official-style``."""
    baselines_cpu: dict[str, list[float]] = field(default_factory=dict)
    max_abs: dict[str, float] = field(default_factory=dict)
    """Largest difference between our EXR and each baseline's output."""

    def median(self, name: str, kind: str | None = None) -> float | None:
        values: list[float] = (
            getattr(self, name) if kind is None else getattr(self, name).get(kind, [])
        )
        return statistics.median(values) if values else None


# --- children ------------------------------------------------------------------------------


def _timm_stand_in() -> None:
    """Register a ``timm.models.layers`` with the three helpers the official model uses."""
    import torch
    from torch import nn

    class DropPath(nn.Module):
        """Stochastic depth: the identity in eval mode, which is all a benchmark runs."""

        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or not self.drop_prob:
                return x
            keep = 1.0 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
            return x * mask / keep

    def to_2tuple(value: Any) -> tuple[Any, Any]:
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a=-2.0, b=2.0):
        return nn.init.trunc_normal_(tensor, mean, std, a, b)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath  # type: ignore[attr-defined]
    layers.to_2tuple = to_2tuple  # type: ignore[attr-defined]
    layers.trunc_normal_ = trunc_normal_  # type: ignore[attr-defined]
    models = types.ModuleType("timm.models")
    models.layers = layers  # type: ignore[attr-defined]
    timm = types.ModuleType("timm")
    timm.models = models  # type: ignore[attr-defined]
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def forward(kind: str, checkpoint: str, scene: str, output: str, official: str = "") -> dict:
    """Time one forward of the ``official`` code or of ``official-style`` on ``scene``
    after one warm-up forward (wall and CPU seconds); runs in a fresh process."""
    import torch

    from service.engines.base import TileBatch
    from service.exposures import load_scene_dir

    exposures = load_scene_dir(Path(scene))
    batch = TileBatch(np.stack(exposures.frames)[None], exposures.evs)
    if kind == "official":
        try:
            import timm.models.layers  # noqa: F401
        except ImportError:
            _timm_stand_in()
        sys.path.insert(0, official)
        from models.AFUNet import AFUNet  # the official repository's module

        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        model = AFUNet(**OFFICIAL_ARGS)
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        model.eval()
        x = torch.from_numpy(batch.model_input())

        def run() -> np.ndarray:
            with torch.no_grad():
                return model(x)[0].permute(1, 2, 0).numpy()

    else:
        from benchmarks.official_style import OfficialStyleEngine
        from service.model.checkpoint import load_afunet

        engine = OfficialStyleEngine(load_afunet(checkpoint))

        def run() -> np.ndarray:
            return engine.run(batch)[0].transpose(1, 2, 0)

    run()
    start, cpu = time.perf_counter(), _cpu_seconds()
    out = run()
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    np.save(output, out)
    return {"seconds": seconds, "cpu_seconds": cpu}


# --- the parent ----------------------------------------------------------------------------


def _run_infer(scene: Path, checkpoint: Path, output: Path, timeout: float) -> tuple[float, ...]:
    """(wall, CPU, printed inference) seconds of one whole ``hdr-service infer`` process."""
    command = [
        sys.executable,
        "-m",
        "service",
        "infer",
        str(scene),
        "--checkpoint",
        str(checkpoint),
        "--no-tile",
        "--dtype",
        "float32",
        "--output",
        str(output),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise ChildFailed(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    match = _INFER_SECONDS.search(done.stdout)
    if match is None:
        raise ChildFailed(f"no inference time in {done.stdout!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, float(match.group(1))


def run(args: argparse.Namespace, folder: Path) -> list[SizeResult]:
    from service.imaging import decode_exr
    from service.quality.synth import make_scene, write_scene

    results = []
    for width, height in args.sizes:
        size = f"{width}x{height}"
        scene = write_scene(make_scene(args.seed, height, width), folder / f"scene_{size}")
        result = SizeResult(width, height)
        kinds = (["official"] if args.official else []) + (
            [] if args.skip_official_style else ["official-style"]
        )
        ours = folder / f"ours_{size}.exr"
        for _ in range(args.runs):
            wall, cpu, inference = _run_infer(scene, args.checkpoint, ours, args.timeout)
            result.process_s.append(wall)
            result.process_cpu_s.append(cpu)
            result.inference_s.append(inference)
            for kind in kinds:
                try:
                    timed = run_in_child(
                        "benchmarks.infer_process:forward",
                        {
                            "kind": kind,
                            "checkpoint": str(args.checkpoint),
                            "scene": str(scene),
                            "output": str(folder / f"{kind}_{size}.npy"),
                            "official": str(args.official or ""),
                        },
                        args.timeout,
                    )
                except ChildFailed as exc:
                    print(f"{size}: {kind} failed: {exc}", file=sys.stderr)
                    continue
                result.baselines.setdefault(kind, []).append(timed["seconds"])
                result.baselines_cpu.setdefault(kind, []).append(timed["cpu_seconds"])
                theirs = np.load(folder / f"{kind}_{size}.npy")
                mine = decode_exr(ours.read_bytes())
                result.max_abs[kind] = float(np.abs(mine - theirs).max())
        results.append(result)
        print("\n".join(_rows(result)), flush=True)
    return results


HEADER = (
    f"{'frame':>9} {'process':>8} {'cpu':>6} {'infer':>6} {'fixed':>6} | "
    f"{'baseline':>14} {'s':>7} {'cpu':>7} {'x proc':>6} {'x cpu':>6} {'x infer':>7} "
    f"{'max|d|':>8}"
)


def _ratio(base: float | None, value: float | None) -> str:
    return f"{base / value:.2f}" if base and value else "-"


def _rows(r: SizeResult) -> list[str]:
    """One line per baseline: its forward against our whole process, CPU time and the
    inference time ``infer`` prints."""
    process, inference = r.median("process_s"), r.median("inference_s")
    cpu = r.median("process_cpu_s")
    head = (
        f"{r.width:>4}x{r.height:<4} {process or 0:8.2f} {cpu or 0:6.2f} {inference or 0:6.2f} "
        f"{(process or 0) - (inference or 0):6.2f} | "
    )
    lines = []
    for kind in r.baselines:
        base, base_cpu = r.median("baselines", kind), r.median("baselines_cpu", kind)
        lines.append(
            f"{head}{kind:>14} {base or 0:7.2f} {base_cpu or 0:7.2f} "
            f"{_ratio(base, process):>6} {_ratio(base_cpu, cpu):>6} "
            f"{_ratio(base, inference):>7} {r.max_abs.get(kind, float('nan')):8.1e}"
        )
    return lines or [head]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="AFUNet weights")
    parser.add_argument(
        "--sizes",
        type=frame_sizes,
        default="100x72,512x512",
        help="comma-separated WxH frame sizes",
    )
    parser.add_argument(
        "--official", type=Path, help="a checkout of the official AFUNet repository"
    )
    parser.add_argument("--skip-official-style", action="store_true")
    parser.add_argument("--runs", type=int, default=3, help="rounds per frame size")
    parser.add_argument("--seed", type=int, default=7, help="synthetic scene seed")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    from service.engines.runtime import tune_cpu_threads

    args = build_parser().parse_args(argv)
    if args.official is not None and not (args.official / "models" / "AFUNet.py").is_file():
        print(f"{args.official} has no models/AFUNet.py", file=sys.stderr)
        return 2
    threads = tune_cpu_threads()  # inherited by every child, ours and the official code
    print(f"OpenMP threads {threads}; seconds are medians of {args.runs} round(s)")
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="hdr-infer-bench-") as tmp:
        results = run(args, Path(tmp))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
