"""Our AFUNet against the official code's outputs on the shared golden case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.exposures import load_scene_dir
from service.model.checkpoint import (
    RECOMPUTED_SUFFIXES,
    UNUSED_OFFICIAL_KEYS,
    load_afunet,
    read_state_dict,
)
from service.model.network import AFUNet
from service.model.preprocess import build_model_input, build_model_input_torch
from service.model.windows import WINDOW_GROUPS, LayoutCache, relative_position_index
from tests.factories import GOLDEN_CHECKPOINT, GOLDEN_SEED0, unit_frames, whole_input


@pytest.fixture(scope="module")
def golden_model() -> AFUNet:
    return load_afunet(GOLDEN_CHECKPOINT)


def test_official_checkpoint_matches_every_parameter() -> None:
    official = read_state_dict(GOLDEN_CHECKPOINT)
    ours = AFUNet().state_dict()
    ignored = {k for k in official if k.endswith(RECOMPUTED_SUFFIXES) or k in UNUSED_OFFICIAL_KEYS}
    assert set(official) - ignored == set(ours)
    assert all(official[k].shape == v.shape for k, v in ours.items())
    # The ignored keys are exactly buffers we recompute and the never-used embedding norm.
    assert {k for k in ignored if k in UNUSED_OFFICIAL_KEYS} == set(UNUSED_OFFICIAL_KEYS)


def test_loaded_parameters_equal_the_checkpoint(golden_model: AFUNet) -> None:
    official = read_state_dict(GOLDEN_CHECKPOINT)
    for name, value in golden_model.state_dict().items():
        assert torch.equal(value, official[name]), name


def test_model_reproduces_official_output(golden_model: AFUNet) -> None:
    x = torch.from_numpy(np.load(GOLDEN_SEED0 / "model_input.npy"))
    expected = np.load(GOLDEN_SEED0 / "model_output.npy")
    with torch.inference_mode():
        out = golden_model(x).numpy()
    assert out.shape == expected.shape == (1, 3, 72, 100)
    assert np.abs(out - expected).max() <= 1e-5


def test_preprocessing_reproduces_official_input() -> None:
    exposures = load_scene_dir(GOLDEN_SEED0)
    x = build_model_input(unit_frames(exposures), exposures.evs)
    expected = np.load(GOLDEN_SEED0 / "model_input.npy")
    assert x.dtype == np.float32 and x.shape == expected.shape
    assert np.abs(x - expected).max() <= 1e-6


def test_engine_batches_build_the_official_input_on_host_and_in_torch() -> None:
    exposures = load_scene_dir(GOLDEN_SEED0)
    expected = np.load(GOLDEN_SEED0 / "model_input.npy")
    # A tolerance, not bit equality: the hdr channels go through a float32 power whose last
    # bit depends on the numpy build and the CPU's SIMD path, not on our code.
    assert np.abs(whole_input(exposures) - expected).max() <= 1e-6
    frames = torch.from_numpy(exposures.raw_crop(0, 0, exposures.height, exposures.width))
    on_device = build_model_input_torch(frames[None], exposures.evs).numpy()
    assert np.abs(on_device - expected).max() <= 1e-6


def test_relative_position_index_equals_official_buffer() -> None:
    official = read_state_dict(GOLDEN_CHECKPOINT)
    ours = relative_position_index(8)
    buffers = [v for k, v in official.items() if k.endswith(".relative_position_index")]
    assert buffers and all(torch.equal(b, ours) for b in buffers)


def test_shift_mask_groups_equal_official_dense_mask() -> None:
    """The official 40x40 ``attn_mask`` (25 windows) against our grouped windows."""
    official = read_state_dict(GOLDEN_CHECKPOINT)
    dense = next(v for k, v in official.items() if k.endswith(".attn_mask"))  # (25, 64, 64)
    model = AFUNet()
    shifted = model.SFM[0].residual_group.blocks[1].attn
    layout = LayoutCache(8).get(1, 40, 40, 4, torch.device("cpu"))
    # Window w of the layout holds tokens gather[w*64:(w+1)*64]; find its official index
    # (row-major over the rolled frame) from its first token.
    rolled = torch.roll(torch.arange(1600).view(40, 40), shifts=(-4, -4), dims=(0, 1))
    first_token_to_window = {
        int(rolled[r * 8, c * 8]): r * 5 + c for r in range(5) for c in range(5)
    }
    start = 0
    for group, count in enumerate(layout.group_windows):
        mask = shifted._shift_masks[group]
        for w in range(start, start + count):
            official_window = first_token_to_window[int(layout.gather[w * 64])]
            assert torch.equal(dense[official_window], mask), (WINDOW_GROUPS[group], w)
        start += count
    assert start == 25 and layout.group_windows == (16, 4, 4, 1)


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (64, 24), (120, 96)])
def test_any_frame_size_gives_same_sized_output(golden_model: AFUNet, size) -> None:
    h, w = size
    x = torch.rand(1, 18, h, w, generator=torch.Generator().manual_seed(h * w))
    with torch.inference_mode():
        out = golden_model(x)
    assert out.shape == (1, 3, h, w)
    assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


def test_batched_tiles_equal_single_tiles(golden_model: AFUNet) -> None:
    x = torch.rand(3, 18, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        batched = golden_model(x)
        single = torch.cat([golden_model(x[i : i + 1]) for i in range(3)])
    assert (batched - single).abs().max() <= 1e-5


def test_window_layouts_are_cached_per_size(golden_model: AFUNet) -> None:
    cache = golden_model.layouts
    a = cache.get(1, 40, 40, 4, torch.device("cpu"))
    assert cache.get(1, 40, 40, 4, torch.device("cpu")) is a
    for i in range(cache.capacity + 3):
        cache.get(1, 8, 8 * (i + 1), 0, torch.device("cpu"))
    assert len(cache._entries) == cache.capacity
