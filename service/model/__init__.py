"""AFUNet in PyTorch: the network, checkpoint loading and the official preprocessing.

Import from the modules themselves (``service.model.network``, ``.checkpoint``,
``.preprocess``): this package re-exports nothing, so that importing the numpy
preprocessing (which the torch-free classical engine uses) does not import torch.
"""
