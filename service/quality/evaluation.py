"""Score a model (or any HDR merge) on a labelled test set, scene by scene.

The evaluation is the official AFUNet test protocol: each scene is reconstructed, scored
with :func:`service.quality.metrics.score`, and the scores are averaged over scenes. A
scene that cannot be read (no label, two TIFFs, a broken exposure file) is reported with
its problem and skipped; the others are still scored.

Padding: the official test reflect-pads every input to a multiple of 128 pixels, runs the
whole frame through the network at once and crops the output back. ``pad_to=128`` with
whole-frame inference (``tile_size=0``) reproduces that exactly; the service's default
(no padding, the model's tiles) scores what the service actually serves.

Anything that maps an exposure set to an HDR image is a :data:`Predictor`; a served model
becomes one through ``service.engines.pipeline.ModelPredictor``. This module runs no
engine itself, so ``engines`` may import ``quality`` (the parity check scores with its
metrics on its synthetic scenes) and never the other way round.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import ImageTooLarge, InvalidExposureSet, UnsupportedImage
from service.exposures import ExposureSet
from service.imaging import write_result
from service.quality.datasets import LAYOUTS, InvalidDataset, LabelledScene, Layout, load_scene
from service.quality.metrics import SCORE_NAMES, Scores, mean_scores, score

log = logging.getLogger(__name__)

#: Errors that make one scene unusable but say nothing about the others.
SCENE_ERRORS = (InvalidDataset, InvalidExposureSet, UnsupportedImage, ImageTooLarge)

#: Exposure set in, linear ``H x W x 3`` float32 HDR out.
Predictor = Callable[[ExposureSet], np.ndarray]
SceneSource = Path | LabelledScene


def pad_amount(size: int, multiple: int) -> int:
    """Pixels to add so that ``size`` becomes a multiple of ``multiple``.

    The official ``pad_image`` computes ``(m - (size - m) % m) % m``, which is this.
    """
    return (-size) % multiple if multiple > 1 else 0


def pad_exposures(exposures: ExposureSet, multiple: int) -> ExposureSet:
    """The frames reflect-padded at the bottom and right to a multiple of ``multiple``.

    Preprocessing is per pixel, so padding the stored frames equals padding the model
    input as the official test does (``F.pad(..., mode="reflect")``, no edge repeat).
    Like the official test (torch's reflect padding refuses it), a frame needing as much
    padding as its side or more is refused: numpy would reflect it again and again, and
    score a frame the official protocol never produces.
    """
    pad_h = pad_amount(exposures.height, multiple)
    pad_w = pad_amount(exposures.width, multiple)
    if pad_h >= exposures.height or pad_w >= exposures.width:
        raise InvalidDataset(
            f"frame {exposures.width}x{exposures.height} cannot be reflect-padded to a"
            f" multiple of {multiple} (pad {pad_w}x{pad_h} must be less than the side,"
            " as in the official test): use a smaller --pad-to, or none"
        )
    if not pad_h and not pad_w:
        return exposures
    frames = tuple(
        np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        for frame in exposures.frames
    )
    return ExposureSet(frames, exposures.evs, exposures.names)


@dataclass(frozen=True)
class SceneResult:
    """The scores of one scene."""

    name: str
    scores: Scores
    width: int
    height: int
    seconds: float
    """Time spent reconstructing (not reading or scoring)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            **self.scores.as_dict(),
            "width": self.width,
            "height": self.height,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class SceneFailure:
    """A scene that could not be evaluated, and why."""

    name: str
    error: str


def _finite_or_none(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf (a perfect PSNR); null keeps the file valid
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass
class EvaluationReport:
    """Per-scene scores, their means, and the scenes that failed."""

    scenes: list[SceneResult] = field(default_factory=list)
    failures: list[SceneFailure] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)
    """What was evaluated (model, dataset, layout, padding), copied into the JSON."""

    @property
    def mean(self) -> Scores | None:
        """Mean scores over the scenes that were evaluated; None if none was."""
        return mean_scores(s.scores for s in self.scenes) if self.scenes else None

    def as_dict(self) -> dict[str, object]:
        """``{"scenes": [...], "mean": {...}, "failed": [...], ...info}``."""
        mean = self.mean
        return _finite_or_none(
            {
                **self.info,
                "scenes": [s.as_dict() for s in self.scenes],
                "mean": mean.as_dict() if mean else None,
                "failed": [{"name": f.name, "error": f.error} for f in self.failures],
            }
        )  # type: ignore[return-value]

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> None:
        """One row per scene, then a ``mean`` row; failed scenes are left out."""
        with Path(path).open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["scene", *SCORE_NAMES, "width", "height", "seconds"])
            for s in self.scenes:
                values = [f"{getattr(s.scores, n):.6f}" for n in SCORE_NAMES]
                writer.writerow([s.name, *values, s.width, s.height, f"{s.seconds:.3f}"])
            mean = self.mean
            if mean is not None:
                values = [f"{getattr(mean, n):.6f}" for n in SCORE_NAMES]
                writer.writerow(["mean", *values, "", "", ""])

    def format_table(self) -> str:
        """The scores as a fixed-width text table, means last, then the failures."""
        width = max(
            [len("scene"), len(f"mean ({len(self.scenes)})")] + [len(s.name) for s in self.scenes]
        )
        header = f"{'scene':<{width}}  PSNR-mu   PSNR-l  SSIM-mu   SSIM-l     time"
        lines = [header, "-" * len(header)]

        def row(name: str, scores: Scores, seconds: str) -> str:
            return (
                f"{name:<{width}}  {scores.psnr_mu:7.4f}  {scores.psnr_l:7.4f}"
                f"  {scores.ssim_mu:7.4f}  {scores.ssim_l:7.4f}  {seconds:>7}"
            )

        for s in self.scenes:
            lines.append(row(s.name, s.scores, f"{s.seconds:.2f}s"))
        mean = self.mean
        if mean is not None:
            lines.append("-" * len(header))
            total = sum(s.seconds for s in self.scenes)
            lines.append(row(f"mean ({len(self.scenes)})", mean, f"{total:.1f}s"))
        if self.failures:
            lines.append("")
            lines.append(f"{len(self.failures)} scene(s) failed:")
            lines.extend(f"  {f.name}: {f.error}" for f in self.failures)
        return "\n".join(lines)


@dataclass(frozen=True)
class SaveOptions:
    """Where and how to keep each scene's prediction."""

    directory: Path
    formats: Sequence[str] = ("exr", "png")
    """Result formats by extension: ``exr`` (float32), ``hdr``, ``png`` (mu-law preview)."""


def evaluate(
    predict: Predictor,
    scenes: Iterable[SceneSource],
    layout: Layout = LAYOUTS["kalantari"],
    *,
    save: SaveOptions | None = None,
    on_scene: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Reconstruct and score every scene; unreadable scenes are recorded and skipped.

    ``scenes`` are scene folders (read with ``layout``) or already loaded scenes (the
    synthetic benchmark passes those). ``on_scene`` is called with each scene's name when
    it is done, failed or not.
    """
    report = EvaluationReport()
    if save is not None:
        save.directory.mkdir(parents=True, exist_ok=True)
    for source in scenes:
        name = source.name
        try:
            scene = source if isinstance(source, LabelledScene) else load_scene(source, layout)
            started = time.perf_counter()
            prediction = predict(scene.exposures)
            seconds = time.perf_counter() - started
        except SCENE_ERRORS as exc:
            log.warning("skipping scene %s: %s", name, exc.message)
            report.failures.append(SceneFailure(name, exc.message))
        else:
            scores = score(prediction, scene.label)
            log.debug("scene %s: %s", name, scores)
            report.scenes.append(
                SceneResult(name, scores, scene.exposures.width, scene.exposures.height, seconds)
            )
            if save is not None:
                for fmt in save.formats:
                    write_result(save.directory / f"{name}.{fmt}", prediction)
        if on_scene is not None:
            on_scene(name)
    return report
