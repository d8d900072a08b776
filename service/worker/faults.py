"""Telling an engine fault (restart the process) from any other failure of a job.

After a CUDA error the context is usually unusable: every later call fails too, and a
worker that kept going would fail every job it took. So such errors end the process (its
supervisor restarts it with a fresh context) and the job goes back to the queue. The
backends raise them under many names (torch's ``RuntimeError: CUDA error: ...``,
``torch.cuda.OutOfMemoryError``, ``torch.AcceleratorError``, ONNX Runtime's
``[ONNXRuntimeError] ... CUDA failure``, TensorRT's messages), so they are recognised by
class name and message, without importing any backend here.
"""

from __future__ import annotations

from typing import Final

from service.errors import EngineFault

#: Exception class names (anywhere in the class's MRO) that mean the device is in trouble.
FAULT_TYPES: Final = frozenset(
    {"OutOfMemoryError", "AcceleratorError", "CudaError", "CudaAPIError", "CUDARuntimeError"}
)
#: Message fragments that mean the same, from the backends' generic exception types.
FAULT_MARKERS: Final = (
    "CUDA error",
    "cudaError",
    "CUDA failure",
    "CUDA out of memory",
    "CUBLAS_STATUS",
    "CUDNN_STATUS",
    "cuDNN error",
    "device-side assert",
    "illegal memory access",
    "NCCL error",
    "[ONNXRuntimeError]",
    "TensorRT",
)


def is_engine_fault(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is an unrecoverable backend or device failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, EngineFault):
            return True
        if {cls.__name__ for cls in type(current).__mro__} & FAULT_TYPES:
            return True
        text = str(current)
        if any(marker in text for marker in FAULT_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False
