"""Checkpoint loading: formats accepted, and every way a file can be wrong."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from service.errors import CheckpointError, CheckpointMismatch
from service.model.checkpoint import load_afunet, read_state_dict
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
    from service.model.network import AFUNet, AFUNetConfig

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
