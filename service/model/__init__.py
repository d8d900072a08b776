"""AFUNet in PyTorch: the network, checkpoint loading and the official preprocessing."""

from service.model.checkpoint import load_afunet, read_state_dict
from service.model.network import AFUNet, AFUNetConfig
from service.model.preprocess import build_model_input

__all__ = [
    "AFUNet",
    "AFUNetConfig",
    "build_model_input",
    "load_afunet",
    "read_state_dict",
]
