"""Synthetic bracketed scenes with a known HDR answer, at any size, without a dataset.

A scene is a procedural radiance map (textured surfaces under a smooth illumination that
spans many stops, a hard-edged deep shadow, a window of sky bright enough to saturate the
middle and long exposures, small light sources that saturate everything, moving objects,
and a patch that deforms between frames) rendered three times, short to long, through a
simple camera: exposure time, photon shot noise and read noise on the linear signal,
clipping, a 12-bit linear ADC, the gamma-2.2 curve, and 16-bit quantisation. Between the
frames the objects move and turn (translation, rotation, occlusion of the background, the
lights and each other) and one patch deforms (local motion), so a merge that ignores motion
ghosts, and one that ignores the other exposures clips and is noisy. The camera stands
still by default, as on a tripod; ``camera_shake`` adds a random translation of the whole
frame, which hurts every method that does not align (the label is in the reference's
geometry).

Conventions (those of Kalantari's data, which the model's input expects):

- ``evs`` are EV stops relative to the shortest exposure, ``(0, s, 2 s)`` with ``s`` in
  {1, 2, 3}; exposure time ``t_i = 2 ** ev_i``. The model's hdr channel
  ``ldr ** 2.2 / 2 ** ev`` then estimates the radiance in the *shortest exposure's unit*:
  1.0 is the radiance that just saturates the shortest frame.
- The ``label`` is the noise-free radiance seen with the reference (middle) frame's
  geometry, in that unit, clipped to [0, 1]: like Kalantari's labels (merged from static
  brackets), it cannot know more than the shortest exposure records, and it matches the
  [0, 1] range of AFUNet's sigmoid output. Light-source cores above 1.0 are therefore 1.0.

Rendering is a pure function of the seed (numpy's PCG64 streams), so a scene is the same
on every run with the same numpy on the same platform.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from service.exposures import ExposureSet
from service.imaging import encode_radiance

log = logging.getLogger(__name__)

GAMMA = 2.2
EXPOSURES = 3
REFERENCE = 1
#: EV step between consecutive exposures (Kalantari's data uses 2 and 3 stops).
EV_STEPS = (1.0, 2.0, 3.0)
#: File names of a written scene, Kalantari's layout (frames sort short to long).
FRAME_NAMES = ("input_1.tif", "input_2.tif", "input_3.tif")
EXPOSURE_FILE = "exposure.txt"
LABEL_FILE = "HDRImg.hdr"
_ADC_BITS = 12
_WHITE = 65535

Seed = int | Sequence[int]
_Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SyntheticScene:
    """Three 16-bit exposures (short to long), their EV stops and the HDR label."""

    frames: tuple[np.ndarray, ...]
    """``H x W x 3`` uint16 frames, short to long; the middle one is the reference."""
    evs: tuple[float, ...]
    """EV stops relative to the shortest exposure: ``(0, s, 2 s)``."""
    label: np.ndarray
    """``H x W x 3`` float32 radiance in the reference's geometry, shortest-exposure unit."""

    @property
    def height(self) -> int:
        return int(self.label.shape[0])

    @property
    def width(self) -> int:
        return int(self.label.shape[1])

    def exposure_set(self) -> ExposureSet:
        """The frames as the service's validated input (no disk involved)."""
        return ExposureSet(self.frames, self.evs, FRAME_NAMES)


# -- procedural fields: functions of continuous (y, x), so any frame can be warped ------------


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _value_noise(rng: np.random.Generator, cell: float, channels: int, extent: float) -> _Field:
    """Smooth random field with features ``cell`` pixels apart, values in [0, 1].

    The lattice covers ``extent`` pixels before it repeats (coordinates wrap around).
    """
    size = int(min(4096, max(8, math.ceil(extent / cell) + 2)))
    lattice = rng.random((size * size, channels)).astype(np.float32)

    def field(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        gy, gx = y / np.float32(cell), x / np.float32(cell)
        y0, x0 = np.floor(gy), np.floor(gx)
        fy = _smoothstep(gy - y0)[..., None]
        fx = _smoothstep(gx - x0)[..., None]
        iy0 = y0.astype(np.int64) % size
        ix0 = x0.astype(np.int64) % size
        iy1, ix1 = (iy0 + 1) % size, (ix0 + 1) % size
        iy0 *= size
        iy1 *= size
        top = np.take(lattice, iy0 + ix0, axis=0)
        top += (np.take(lattice, iy0 + ix1, axis=0) - top) * fx
        bottom = np.take(lattice, iy1 + ix0, axis=0)
        bottom += (np.take(lattice, iy1 + ix1, axis=0) - bottom) * fx
        top += (bottom - top) * fy
        return top

    return field


def _fractal(
    rng: np.random.Generator, cells: Sequence[float], channels: int, extent: float
) -> _Field:
    """Sum of value-noise octaves, amplitude halving per octave, normalised to [0, 1]."""
    octaves = [_value_noise(rng, c, channels, extent) for c in cells]
    amplitudes = [0.5**i for i in range(len(cells))]
    total = sum(amplitudes)

    def field(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = octaves[0](y, x) * amplitudes[0]
        for octave, amplitude in zip(octaves[1:], amplitudes[1:], strict=True):
            out += octave(y, x) * amplitude
        return out / total

    return field


def _stripes(rng: np.random.Generator, period: float) -> _Field:
    """A sharp periodic pattern (stripes or checks): texture that shows every misalignment."""
    angle = rng.uniform(0, math.pi)
    checks = bool(rng.random() < 0.5)
    cos_a, sin_a = math.cos(angle), math.sin(angle)

    def field(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        u = (x * cos_a + y * sin_a) / period
        pattern = np.sin(2 * math.pi * u)
        if checks:
            v = (-x * sin_a + y * cos_a) / period
            pattern = pattern * np.sin(2 * math.pi * v)
        return (0.5 + 0.5 * np.tanh(4.0 * pattern))[..., None].astype(np.float32)

    return field


def _coverage(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance in pixels (< 0 inside)."""
    return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)


# -- scene description ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Motion:
    """Where a layer is in frame ``i``: an offset and a rotation about its centre."""

    centre: tuple[float, float]
    velocity: tuple[float, float]
    jitter: tuple[tuple[float, float], ...]
    spin: float

    def position(self, frame: int) -> tuple[float, float]:
        """The layer's centre in scene coordinates in ``frame``."""
        step = frame - REFERENCE
        return (
            self.centre[0] + self.velocity[0] * step + self.jitter[frame][0],
            self.centre[1] + self.velocity[1] * step + self.jitter[frame][1],
        )

    def local(self, y: np.ndarray, x: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene coordinates to the layer's own (rotated, centred) coordinates."""
        step = frame - REFERENCE
        cy, cx = self.position(frame)
        angle = self.spin * step
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        dy, dx = y - cy, x - cx
        return dy * cos_a + dx * sin_a, -dy * sin_a + dx * cos_a


@dataclass(frozen=True)
class _Object:
    """A textured, evenly lit ellipse or rounded rectangle that moves between frames."""

    motion: _Motion
    half_axes: tuple[float, float]
    rounded_box: bool
    albedo: _Field
    stripes: _Field | None
    colour: np.ndarray
    radiance: float
    wave: tuple[float, float, tuple[float, ...]] | None
    """Local (non-rigid) motion: amplitude, wavelength and a phase per frame."""

    def reach(self) -> float:
        """A radius around the centre outside which the object covers nothing."""
        wobble = 1.5 * self.wave[0] if self.wave is not None else 0.0
        return math.hypot(*self.half_axes) + wobble + 2.0

    def render(self, y: np.ndarray, x: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(coverage ``H x W``, radiance ``H x W x 3``) of the object in ``frame``."""
        v, u = self.motion.local(y, x, frame)
        if self.wave is not None:
            amplitude, wavelength, phases = self.wave
            u = u + amplitude * np.sin(2 * math.pi * v / wavelength + phases[frame])
            v = v + 0.5 * amplitude * np.sin(2 * math.pi * u / wavelength + 2 * phases[frame])
        ay, ax = self.half_axes
        if self.rounded_box:
            radius = 0.3 * min(ay, ax)
            qy = np.abs(v) - (ay - radius)
            qx = np.abs(u) - (ax - radius)
            outside = np.hypot(np.maximum(qy, 0), np.maximum(qx, 0))
            distance = outside + np.minimum(np.maximum(qy, qx), 0) - radius
        else:
            scale = min(ay, ax)
            distance = (np.sqrt((v / ay) ** 2 + (u / ax) ** 2) - 1.0) * scale
        cover = _coverage(distance)
        texture = 0.15 + 0.8 * self.albedo(v, u)
        if self.stripes is not None:
            texture = texture * (0.35 + 0.65 * self.stripes(v, u))
        return cover, texture * self.colour * np.float32(self.radiance)


@dataclass(frozen=True)
class _Scene:
    """Everything random about a scene, drawn once; frames are rendered from it."""

    height: int
    width: int
    camera: tuple[tuple[float, float], ...]
    base: float
    albedo: _Field
    tint: _Field
    texture: _Field
    texture_region: tuple[float, float, float, float]
    illumination: _Field
    illumination_stops: float
    shadow: tuple[float, float, float, float]
    """Normal (ny, nx), offset and depth in stops of the hard shadow edge."""
    window: tuple[float, float, float, float]
    sky: _Field
    sky_level: float
    sky_colour: np.ndarray
    lights: tuple[tuple[float, float, float, float, np.ndarray], ...]
    objects: tuple[_Object, ...]

    def radiance(self, frame: int) -> np.ndarray:
        """``H x W x 3`` float32 scene radiance (shortest-exposure unit) in ``frame``."""
        ys, xs = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        ys += np.float32(self.camera[frame][0])
        xs += np.float32(self.camera[frame][1])

        albedo = 0.04 + 0.86 * self.albedo(ys, xs)
        albedo = albedo * (0.55 + 0.9 * self.tint(ys, xs))
        y0, x0, y1, x1 = self.texture_region
        inside = _coverage(np.maximum(np.maximum(y0 - ys, ys - y1), np.maximum(x0 - xs, xs - x1)))[
            ..., None
        ]
        albedo = albedo * (1 - inside + inside * (0.2 + 0.8 * self.texture(ys, xs)))

        stops = -self.illumination_stops * self.illumination(ys, xs)[..., 0]
        ny, nx, offset, depth = self.shadow
        edge = (ys * ny + xs * nx - offset) / 1.5  # a penumbra of a couple of pixels
        stops = stops - depth / (1 + np.exp(np.clip(-edge, -30, 30)))
        radiance = albedo * (self.base * np.exp2(stops))[..., None]

        wy0, wx0, wy1, wx1 = self.window
        bars = np.minimum(np.abs(xs - (wx0 + wx1) / 2), np.abs(ys - (wy0 + wy1) / 2)) - 2.0
        frame_distance = np.maximum(np.maximum(wy0 - ys, ys - wy1), np.maximum(wx0 - xs, xs - wx1))
        glass = _coverage(np.maximum(frame_distance, -bars))[..., None]
        sky = self.sky_level * (0.35 + 0.65 * self.sky(ys, xs)) * self.sky_colour
        sky = sky * (1.0 + 0.8 * (wy1 - ys) / max(wy1 - wy0, 1.0))[..., None]
        radiance = radiance * (1 - glass) + sky * glass

        for ly, lx, sigma, peak, colour in self.lights:
            r2 = ((ys - ly) ** 2 + (xs - lx) ** 2) / (2 * sigma**2)
            core = np.exp(-r2) + 0.04 * np.exp(-r2 / 16)
            radiance = radiance + (peak * core)[..., None] * colour

        shift_y, shift_x = self.camera[frame]
        for obj in self.objects:
            # Render only the object's bounding box: most of the frame is far from it.
            cy, cx = obj.motion.position(frame)
            reach = obj.reach()
            top = max(0, math.floor(cy - shift_y - reach))
            left = max(0, math.floor(cx - shift_x - reach))
            bottom = min(self.height, math.ceil(cy - shift_y + reach) + 1)
            right = min(self.width, math.ceil(cx - shift_x + reach) + 1)
            if top >= bottom or left >= right:
                continue
            box = (slice(top, bottom), slice(left, right))
            cover, shade = obj.render(ys[box], xs[box], frame)
            cover = cover[..., None]
            radiance[box] = radiance[box] * (1 - cover) + shade * cover
        return np.maximum(radiance, 0).astype(np.float32)


def _colour(rng: np.random.Generator, saturation: float) -> np.ndarray:
    c = 1.0 - saturation * rng.random(3)
    return (c / c.max()).astype(np.float32)


def _draw_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    step: float,
    motion: bool,
    camera_shake: float,
) -> _Scene:
    unit = float(min(height, width))
    extent = float(max(height, width)) + 144.0  # room for 64 pixels of shake either way
    t_mid = 2.0**step

    def jitter(scale: float) -> tuple[tuple[float, float], ...]:
        """Per-frame offsets in [-scale, scale] pixels; none for the reference."""
        if not motion:
            return ((0.0, 0.0),) * EXPOSURES
        offsets = rng.uniform(-1.0, 1.0, (EXPOSURES, 2)) * scale
        offsets[REFERENCE] = 0.0
        return tuple((float(dy), float(dx)) for dy, dx in offsets)

    camera = jitter(camera_shake)  # drawn even when 0, so shake alone changes nothing else

    wh, ww = rng.uniform(0.2, 0.4) * height, rng.uniform(0.15, 0.35) * width
    wy0, wx0 = rng.uniform(0.03, 0.5) * height, rng.uniform(0.03, 0.97) * width - ww / 2
    window = (float(wy0), float(wx0), float(wy0 + wh), float(wx0 + ww))

    th, tw = rng.uniform(0.2, 0.45) * height, rng.uniform(0.2, 0.45) * width
    ty0, tx0 = rng.uniform(0.0, 1.0) * (height - th), rng.uniform(0.0, 1.0) * (width - tw)

    angle = rng.uniform(0, 2 * math.pi)
    ny, nx = math.sin(angle), math.cos(angle)
    through = (rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width)
    shadow = (ny, nx, through[0] * ny + through[1] * nx, float(rng.uniform(3.5, 6.5)))

    lights = []
    for _ in range(int(rng.integers(1, 4))):
        lights.append(
            (
                float(rng.uniform(0.05, 0.95) * height),
                float(rng.uniform(0.05, 0.95) * width),
                float(rng.uniform(0.008, 0.025) * unit),
                float(rng.uniform(1.5, 8.0)),
                _colour(rng, 0.3),
            )
        )

    objects = []
    count = int(rng.integers(2, 5))
    for index in range(count + 1):
        deforming = index == count  # the last layer is the locally moving patch
        half = (rng.uniform(0.07, 0.16) * unit, rng.uniform(0.07, 0.2) * unit)
        speed = rng.uniform(0.02, 0.07) * unit if motion and not deforming else 0.0
        heading = rng.uniform(0, 2 * math.pi)
        kind = rng.random()
        if kind < 0.2:  # an emissive, saturating object (a lamp, a screen) that moves
            level = float(rng.uniform(0.25, 1.0))
        elif kind < 0.45:  # a dark object, deep in the long exposure's range
            level = float(rng.uniform(0.002, 0.02)) / t_mid
        else:
            level = float(rng.uniform(0.15, 1.6)) / t_mid
        wave = None
        if deforming and motion:
            wave = (
                float(rng.uniform(0.015, 0.035) * unit),
                float(rng.uniform(0.15, 0.3) * unit),
                tuple(float(p) for p in rng.uniform(0, 2 * math.pi, EXPOSURES)),
            )
        objects.append(
            _Object(
                motion=_Motion(
                    centre=(
                        float(rng.uniform(0.1, 0.9) * height),
                        float(rng.uniform(0.1, 0.9) * width),
                    ),
                    velocity=(speed * math.sin(heading), speed * math.cos(heading)),
                    jitter=jitter(0.01 * unit),
                    spin=float(rng.uniform(-0.08, 0.08)) if motion and not deforming else 0.0,
                ),
                half_axes=(float(half[0]), float(half[1])),
                rounded_box=bool(rng.random() < 0.5),
                albedo=_fractal(rng, (0.08 * unit, 0.02 * unit, 3.0), 3, unit),
                stripes=_stripes(rng, rng.uniform(4.0, 12.0)) if rng.random() < 0.6 else None,
                colour=_colour(rng, 0.7),
                radiance=level,
                wave=wave,
            )
        )

    return _Scene(
        height=height,
        width=width,
        camera=camera,
        base=0.9 / t_mid,
        albedo=_fractal(rng, (0.25 * unit, 0.08 * unit, 0.025 * unit, 4.0), 1, extent),
        tint=_fractal(rng, (0.3 * unit, 0.1 * unit), 3, extent),
        texture=_stripes(rng, rng.uniform(3.0, 10.0)),
        texture_region=(float(ty0), float(tx0), float(ty0 + th), float(tx0 + tw)),
        illumination=_fractal(rng, (0.5 * unit, 0.2 * unit), 1, extent),
        illumination_stops=float(rng.uniform(2.0, 4.0)),
        shadow=shadow,
        window=window,
        sky=_fractal(rng, (0.2 * unit, 0.06 * unit, 0.02 * unit), 1, extent),
        sky_level=float(rng.uniform(0.25, 0.6)),
        sky_colour=np.array([0.75, 0.88, 1.0], dtype=np.float32),
        lights=tuple(lights),
        objects=tuple(objects),
    )


# -- the camera -------------------------------------------------------------------------------


def _expose(
    rng: np.random.Generator,
    radiance: np.ndarray,
    time: float,
    gain: float,
    read_noise: float,
    noise: bool,
) -> np.ndarray:
    """A 16-bit gamma-2.2 frame of ``radiance`` exposed for ``time`` (1.0 = full scale)."""
    signal = radiance.astype(np.float64) * time
    if noise:
        sigma = np.sqrt(gain * np.minimum(signal, 1.0) + read_noise**2)
        signal = signal + sigma * rng.standard_normal(signal.shape)
    levels = 2**_ADC_BITS - 1
    linear = np.round(np.clip(signal, 0.0, 1.0) * levels) / levels
    encoded = linear ** (1.0 / GAMMA)
    return np.round(encoded * _WHITE).astype(np.uint16)


def make_scene(
    seed: Seed,
    height: int = 512,
    width: int = 768,
    *,
    ev_step: float | None = None,
    motion: bool = True,
    noise: bool = True,
    camera_shake: float = 0.0,
) -> SyntheticScene:
    """Render one synthetic scene; the same arguments give the same scene.

    ``ev_step`` fixes the stops between exposures (default: drawn from ``EV_STEPS``);
    ``motion=False`` renders a static scene (nothing moves, the camera neither),
    ``noise=False`` a noise-free camera (quantisation remains), and ``camera_shake``
    moves the whole frame of the short and long exposures by up to that many pixels.
    """
    if height < 16 or width < 16:
        raise ValueError(f"a synthetic scene needs at least 16x16 pixels, got {width}x{height}")
    rng = np.random.default_rng(seed)
    step = float(ev_step) if ev_step is not None else float(rng.choice(EV_STEPS))
    if not 0 < step <= 8:
        raise ValueError(f"ev_step must be in (0, 8] stops, got {step}")
    if not 0 <= camera_shake <= 64:
        raise ValueError(f"camera_shake must be in [0, 64] pixels, got {camera_shake}")
    scene = _draw_scene(rng, height, width, step, motion, camera_shake)
    evs = tuple(i * step for i in range(EXPOSURES))
    gain = float(10 ** rng.uniform(math.log10(2e-5), math.log10(1.5e-4)))
    read_noise = float(rng.uniform(1e-4, 5e-4))
    frames = []
    label = None
    for i, ev in enumerate(evs):
        radiance = scene.radiance(i)
        if i == REFERENCE:
            label = np.minimum(radiance, 1.0)
        frames.append(_expose(rng, radiance, 2.0**ev, gain, read_noise, noise))
    assert label is not None
    return SyntheticScene(tuple(frames), evs, label)


# -- files ------------------------------------------------------------------------------------


def write_scene(scene: SyntheticScene, folder: str | Path) -> Path:
    """Write ``scene`` in Kalantari's layout: three TIFFs, ``exposure.txt``, ``HDRImg.hdr``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(scene.frames, FRAME_NAMES, strict=True):
        tifffile.imwrite(
            folder / name, frame, photometric="rgb", compression="zlib", predictor=True
        )
    (folder / EXPOSURE_FILE).write_text("".join(f"{ev:g}\n" for ev in scene.evs))
    (folder / LABEL_FILE).write_bytes(encode_radiance(scene.label))
    return folder


def scene_seed(seed: int, index: int) -> tuple[int, int]:
    """The seed of scene ``index`` of a set generated with ``seed``."""
    return (seed, index)


def scene_name(index: int) -> str:
    """Folder name of scene ``index`` (``001``, ``002``, ... as in Kalantari's test set)."""
    return f"{index + 1:03d}"


def generate_dataset(
    out_dir: str | Path,
    scenes: int,
    height: int = 512,
    width: int = 768,
    seed: int = 0,
    *,
    motion: bool = True,
    camera_shake: float = 0.0,
    ev_step: float | None = None,
    on_scene: Callable[[int, Path], None] | None = None,
) -> list[Path]:
    """Write ``scenes`` scene folders (``001``, ``002``, ...) under ``out_dir``.

    Scene ``i`` is ``make_scene(scene_seed(seed, i), ...)``, so a set of 10 is the first
    10 scenes of a set of 100 with the same seed. Returns the folders' paths.
    """
    if scenes < 1:
        raise ValueError(f"scenes must be at least 1, got {scenes}")
    out = Path(out_dir)
    paths = []
    for index in range(scenes):
        scene = make_scene(
            scene_seed(seed, index),
            height,
            width,
            ev_step=ev_step,
            motion=motion,
            camera_shake=camera_shake,
        )
        path = write_scene(scene, out / scene_name(index))
        log.debug("wrote synthetic scene %s (EVs %s)", path, scene.evs)
        paths.append(path)
        if on_scene is not None:
            on_scene(index, path)
    return paths
