"""Every ServiceError says, once, whether trying again may help; the worker goes by it."""

from __future__ import annotations

import ast
import importlib

from service.errors import ServiceError
from tests.factories import REPO

#: The intended answer per error: False only where the same request can never succeed.
RETRYABLE = {
    "ServiceError": True,
    "BadRequest": False,
    "InvalidExposureSet": False,
    "UnsupportedImage": False,
    "ImageTooLarge": False,
    "CheckpointError": True,
    "CheckpointMismatch": True,
    "EngineUnavailable": True,
    "EngineFault": True,
    "JobNotFound": False,
    "JobNotFinished": True,
    "QueueFull": True,
    "IdempotencyKeyReused": False,
    "JobTooLarge": False,
    "RateLimited": True,
    "NotAuthenticated": False,
    "Forbidden": False,
    "RequestTooLarge": False,
    "ModelUnavailable": False,
    "NoWorkerForModel": True,
    "NoResult": False,
    "NotCancellable": False,
    "Unavailable": True,
    "NotReady": True,
    "InvalidDataset": False,
    "ModelNotServed": False,
    "StoreUnavailable": True,
    "BlobNotFound": False,
    "ClientError": True,  # the class default; an instance decides from its HTTP status
    "JobFailed": False,
    "IncompleteImage": False,  # the same cut-short file stays cut short
    "BodyTimeout": True,  # the client may send its body in time on another try
    "InvalidWebhookUrl": False,  # a malformed or refused URL stays refused
    "UnresolvedHost": True,  # DNS may answer later (the dispatcher retries it)
}


def _service_error_classes() -> dict[str, str]:
    """Class name -> module of every ServiceError subclass under ``service/``, from source.

    Read from the source rather than ``__subclasses__()`` so that a subclass in a module
    nothing imported yet is found too.
    """
    bases: dict[str, tuple[str, list[str]]] = {}
    for path in sorted((REPO / "service").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                bases[node.name] = (module, names)
    found = {"ServiceError": "service.errors"}
    grew = True
    while grew:
        grew = False
        for name, (module, parents) in bases.items():
            if name not in found and any(p in found for p in parents):
                found[name] = module
                grew = True
    return found


def test_every_service_error_decides_retryable_as_intended() -> None:
    classes = _service_error_classes()
    assert set(classes) == set(RETRYABLE), "a new ServiceError must decide `retryable` here"
    for name, module in classes.items():
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, ServiceError)
        assert cls.retryable is RETRYABLE[name], name


def test_a_model_the_worker_lacks_is_a_service_error() -> None:
    from service.worker.models import ModelNotServed

    error = ModelNotServed("model 'x' is not served by this worker")
    assert isinstance(error, ServiceError) and error.code == "model_not_served"
    assert error.message == "model 'x' is not served by this worker"
