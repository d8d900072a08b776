"""Loading AFUNet weights: the official release format and plain state dicts.

The official ``test.py`` wraps the model in ``nn.DataParallel`` and saves
``{'state_dict': ...}`` with every key prefixed ``module.``. Besides parameters it stores
buffers we recompute (``relative_position_index``, ``attn_mask`` built for its training
``img_size``) and the LayerNorm of an embedding the forward never uses
(``patch_embed_div3.norm``). Those are checked for shape and dropped; every other key must
match our parameters exactly, or loading fails naming the keys — never a partial load.

The buffers also tell one thing about the architecture: the official blocks shift their
windows only when the training ``img_size`` exceeds the window (Swin's rule), and only a
shifting block registers an ``attn_mask``. A release-format checkpoint with
``relative_position_index`` buffers but no ``attn_mask`` was therefore trained with
``img_size <= window_size`` and never shifts; it loads with shifted windows off, exactly as
the official code runs it. A plain state dict holds no buffers and cannot tell: it loads
as every released checkpoint is, shifted. ``img_size < window_size`` (the official code
then shrinks the window itself) is refused with that reason.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from service.errors import CheckpointError, CheckpointMismatch
from service.model.layers import SelfAttentionBlock
from service.model.network import AFUNet, AFUNetConfig

log = logging.getLogger(__name__)

#: Buffers the official model registers that we derive ourselves.
RECOMPUTED_SUFFIXES = (".relative_position_index", ".attn_mask")
_INDEX, _MASK = RECOMPUTED_SUFFIXES
#: Parameters of the official model that its forward never reads.
UNUSED_OFFICIAL_KEYS = ("patch_embed_div3.norm.weight", "patch_embed_div3.norm.bias")
_PREFIX = "module."
_MAX_LISTED = 8


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``name -> tensor`` dict, without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    try:
        with warnings.catch_warnings():
            # Old pickle protocols warn; the file is judged by whether it loads.
            warnings.simplefilter("ignore")
            # Memory-mapped: tensors are views of the page cache, not copies read into
            # the heap. Only the zip format (every torch.save since 1.6) can be mapped.
            obj = torch.load(
                path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except Exception as exc:  # the unpickler of untrusted bytes fails in many types
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint"
            f" (truncated or not a weights file): {exc}"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint {path} holds {type(obj).__name__}, not a state dict of tensors"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} has entries that are not tensors: {_listing(bad)}"
        )
    if all(k.startswith(_PREFIX) for k in obj):
        return {k[len(_PREFIX) :]: v for k, v in obj.items()}
    return dict(obj)


def checkpoint_config(
    state: Mapping[str, torch.Tensor], base: AFUNetConfig | None = None
) -> AFUNetConfig:
    """``base`` (default: the released architecture) with what the checkpoint's buffers
    say about shifted windows; unchanged for a plain state dict, which holds none."""
    config = base or AFUNetConfig()
    if not any(k.endswith(_INDEX) for k in state):
        return config
    return replace(config, shift_windows=any(k.endswith(_MASK) for k in state))


def _shift_problems(model: AFUNet, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Where a release-format checkpoint's ``attn_mask`` buffers disagree with the blocks
    of ``model`` that shift (a plain state dict has none to compare)."""
    if not any(k.endswith(_INDEX) for k in state):
        return []
    shifted = {
        f"{name}{_MASK}"
        for name, module in model.named_modules()
        if isinstance(module, SelfAttentionBlock) and module.shift
    }
    masks = {k for k in state if k.endswith(_MASK)}
    problems = []
    if shifted and not masks:
        problems.append(
            "it has no attn_mask buffers: it was trained with img_size <= window_size, so"
            " its blocks never shift, but this model was built with shifted windows"
        )
    elif shifted - masks:
        problems.append(
            f"attn_mask missing for shifted block(s): {_listing(sorted(shifted - masks))}"
        )
    if masks - shifted:
        problems.append(
            f"attn_mask for block(s) that do not shift: {_listing(sorted(masks - shifted))}"
        )
    return problems


def match_state_dict(model: AFUNet, state: Mapping[str, torch.Tensor], source: str) -> dict:
    """Check ``state`` against ``model`` and return exactly the tensors to load."""
    expected = model.state_dict()
    kept: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if key in expected:
            kept[key] = value
        elif key.endswith(RECOMPUTED_SUFFIXES) or key in UNUSED_OFFICIAL_KEYS:
            continue
        else:
            unexpected.append(key)
    missing = sorted(k for k in expected if k not in kept)
    shapes = sorted(
        f"{k} (checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in kept.items()
        if v.shape != expected[k].shape
    )
    index_bad = [
        k
        for k, v in state.items()
        if k.endswith(".relative_position_index")
        and v.shape != (model.config.window_size**2, model.config.window_size**2)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} parameter(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listing(sorted(unexpected))}")
    if shapes:
        problems.append(f"mis-shaped {len(shapes)} parameter(s): {_listing(shapes)}")
    if index_bad:
        problems.append(
            f"window size differs from {model.config.window_size}: {_listing(index_bad)}"
            f" (trained with img_size below the {model.config.window_size}-pixel window? The"
            " official code then shrinks its windows to img_size; that is not supported)"
        )
    problems += _shift_problems(model, state)
    if problems:
        raise CheckpointMismatch(
            f"checkpoint {source} does not match AFUNet: " + "; ".join(problems)
        )
    return kept


def load_afunet(
    path: str | Path, device: str | torch.device = "cpu", config: AFUNetConfig | None = None
) -> AFUNet:
    """Build AFUNet and load ``path`` into it: eval mode, float32, on ``device``.

    ``config`` (default: the released architecture) takes the checkpoint's word on
    shifted windows (``checkpoint_config``).
    """
    state = read_state_dict(path)
    config = checkpoint_config(state, config)
    if not config.shift_windows:
        log.warning(
            "checkpoint %s has no attn_mask buffers (trained with img_size <= window_size):"
            " loading it with shifted windows off, as the official code runs it",
            path,
        )
    model = AFUNet(config)
    kept = match_state_dict(model, state, str(path))
    non_float = [k for k, v in kept.items() if not v.is_floating_point()]
    if non_float:
        raise CheckpointMismatch(
            f"checkpoint {path} has non-float parameters: {_listing(non_float)}"
        )
    # assign=True makes the checkpoint's (memory-mapped) tensors the parameters instead of
    # copying them into freshly initialised ones; .float() is a no-op on float32 weights.
    model.load_state_dict({k: v.float() for k, v in kept.items()}, strict=True, assign=True)
    log.info("loaded AFUNet checkpoint %s (%d tensors)", path, len(kept))
    return model.to(device).eval()
