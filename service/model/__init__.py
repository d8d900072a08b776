"""AFUNet in PyTorch: the network, checkpoint loading and the official preprocessing."""

from .checkpoint import load_afunet, read_state_dict
from .network import AFUNet, AFUNetConfig
from .preprocess import build_model_input

__all__ = [
    "AFUNet",
    "AFUNetConfig",
    "build_model_input",
    "load_afunet",
    "read_state_dict",
]
