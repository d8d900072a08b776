"""Checkpoint loading: formats accepted, and every way a file can be wrong."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from service.errors import CheckpointError, CheckpointMismatch
from service.model.checkpoint import checkpoint_config, load_afunet, read_state_dict
from service.model.layers import SelfAttentionBlock, WindowAttentionCore
from service.model.network import AFUNet, AFUNetConfig
from service.model.windows import relative_position_index
from tests.factories import GOLDEN_CHECKPOINT, GOLDEN_SEED0


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN_CHECKPOINT, weights_only=True)["state_dict"]


def _save(tmp_path: Path, obj: object, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _golden_output(model: torch.nn.Module) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(np.load(GOLDEN_SEED0 / "model_input.npy"))).numpy()


def test_plain_state_dict_without_prefix_loads_the_same_model(tmp_path: Path) -> None:
    official = load_afunet(GOLDEN_CHECKPOINT)
    plain = _save(tmp_path, official.state_dict())
    again = load_afunet(plain)
    assert np.array_equal(_golden_output(official), _golden_output(again))


def test_loaded_model_is_float32_in_eval_mode(tmp_path: Path, official_state) -> None:
    half = {k: v.half() if v.is_floating_point() else v for k, v in official_state.items()}
    model = load_afunet(_save(tmp_path, {"state_dict": half}))
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_parameter_is_named(tmp_path: Path, official_state) -> None:
    state = dict(official_state)
    del state["module.SFM.2.residual_group.blocks.3.attn.qkv.weight"]
    with pytest.raises(CheckpointMismatch, match=r"missing 1 .*SFM\.2\.residual_group\.blocks\.3"):
        load_afunet(_save(tmp_path, {"state_dict": state}))


def test_unexpected_key_is_named(tmp_path: Path, official_state) -> None:
    state = dict(official_state)
    state["module.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatch, match=r"unexpected 1 key\(s\): extra_head\.weight"):
        load_afunet(_save(tmp_path, {"state_dict": state}))


def test_mis_shaped_parameter_is_named_with_both_shapes(tmp_path: Path, official_state) -> None:
    state = dict(official_state)
    state["module.conv_skip.weight"] = torch.zeros(24, 24, 5, 5)
    with pytest.raises(
        CheckpointMismatch,
        match=r"conv_skip\.weight \(checkpoint \(24, 24, 5, 5\), model \(24, 24, 3, 3\)\)",
    ):
        load_afunet(_save(tmp_path, {"state_dict": state}))


def test_wider_model_checkpoint_is_refused_not_partially_loaded(tmp_path: Path) -> None:
    wide = AFUNet(AFUNetConfig(embed_dim=96)).state_dict()
    with pytest.raises(CheckpointMismatch, match="mis-shaped"):
        load_afunet(_save(tmp_path, wide))


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_afunet(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    data = GOLDEN_CHECKPOINT.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_afunet(path)


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_afunet(path)


class _Payload:
    """An arbitrary class: weights_only loading must refuse to build it."""


def test_pickle_of_code_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_afunet(path)


def test_checkpoint_of_wrong_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds list"):
        load_afunet(_save(tmp_path, [torch.zeros(3)]))


def test_non_tensor_entries_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not tensors: lr"):
        read_state_dict(_save(tmp_path, {"state_dict": {"lr": 0.1}}))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_afunet(tmp_path / "nope.pth")


# --- checkpoints trained on crops no larger than a window (official: no shifted windows) --

#: A small AFUNet (one iteration of four enhancement blocks, two of them shifted): fast,
#: and every structural rule of the released one applies.
TINY = AFUNetConfig(embed_dim=12, depths=(4,), num_heads=(2,))


def _official_state(model: AFUNet, img_size: int, window: int = 8) -> dict[str, torch.Tensor]:
    """``model``'s parameters saved as the official code saves a model built for
    ``img_size``-pixel training crops: ``module.`` prefixes, a ``relative_position_index``
    per window attention and, only when the crops exceed the window (Swin's rule for
    shifting at all), an ``attn_mask`` per shifting block."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    windows = (img_size // window) ** 2
    for name, module in AFUNet(TINY).named_modules():  # the shifting layout's blocks
        if isinstance(module, WindowAttentionCore):
            state[f"module.{name}.relative_position_index"] = relative_position_index(window)
        if isinstance(module, SelfAttentionBlock) and module.shift and img_size > window:
            state[f"module.{name}.attn_mask"] = torch.zeros(windows, window**2, window**2)
    return state


def _run(model: AFUNet, seed: int = 0) -> torch.Tensor:
    x = torch.rand(1, 18, 24, 32, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(x)


@pytest.fixture(scope="module")
def tiny() -> AFUNet:
    torch.manual_seed(7)
    model = AFUNet(TINY)
    with torch.no_grad():  # non-zero position biases, so that every path matters
        for name, value in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                value.normal_(0, 0.5)
    model.refresh_caches()
    return model


def test_checkpoint_trained_on_window_sized_crops_loads_without_shifted_windows(
    tmp_path: Path, tiny: AFUNet
) -> None:
    path = _save(tmp_path, {"state_dict": _official_state(tiny, img_size=8)})
    loaded = load_afunet(path, config=TINY)
    assert loaded.config.shift_windows is False
    assert all(not block.shift for block in loaded.SFM[0].residual_group.blocks)
    # Exactly the official no-shift network: plain windows in every block.
    unshifted = AFUNet(replace(TINY, shift_windows=False))
    unshifted.load_state_dict(tiny.state_dict())
    assert torch.equal(_run(loaded), _run(unshifted))
    # ... which is another image than the shifted one the port used to run.
    assert (_run(loaded) - _run(tiny)).abs().max() > 1e-3


def test_checkpoint_trained_on_larger_crops_loads_with_shifted_windows(
    tmp_path: Path, tiny: AFUNet
) -> None:
    loaded = load_afunet(_save(tmp_path, {"state_dict": _official_state(tiny, 40)}), config=TINY)
    assert loaded.config.shift_windows is True
    assert [b.shift for b in loaded.SFM[0].residual_group.blocks] == [0, 4, 0, 4]
    assert torch.equal(_run(loaded), _run(tiny))


def test_attn_masks_that_fit_neither_layout_are_refused_naming_the_blocks(
    tmp_path: Path, tiny: AFUNet
) -> None:
    state = _official_state(tiny, 40)
    del state["module.SFM.0.residual_group.blocks.3.attn_mask"]
    state["module.SFM.0.residual_group.blocks.2.attn_mask"] = torch.zeros(25, 64, 64)
    with pytest.raises(CheckpointMismatch) as caught:
        load_afunet(_save(tmp_path, {"state_dict": state}), config=TINY)
    message = caught.value.message
    assert "attn_mask missing for shifted block(s): SFM.0.residual_group.blocks.3" in message
    assert "attn_mask for block(s) that do not shift: SFM.0.residual_group.blocks.2" in message


def test_checkpoint_whose_window_shrank_to_its_crops_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    """Official: img_size < window_size makes the window img_size (here 4): unsupported."""
    small = AFUNet(replace(TINY, window_size=4, shift_windows=False))
    state = {f"module.{k}": v for k, v in small.state_dict().items()}
    for name, module in small.named_modules():
        if isinstance(module, WindowAttentionCore):
            state[f"module.{name}.relative_position_index"] = relative_position_index(4)
    with pytest.raises(CheckpointMismatch, match="img_size below the 8-pixel window"):
        load_afunet(_save(tmp_path, {"state_dict": state}), config=TINY)


def test_a_plain_state_dict_keeps_the_configured_windows(tiny: AFUNet) -> None:
    """No buffers, nothing to tell: the released (shifted) layout, or what the caller says."""
    plain = tiny.state_dict()
    assert checkpoint_config(plain).shift_windows is True
    assert checkpoint_config(plain, replace(TINY, shift_windows=False)).shift_windows is False
