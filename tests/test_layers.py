"""Dependencies between the service's packages point one way (ARCHITECTURE section 2):
the API depends on the webhooks (it runs their dispatcher and checks webhook URLs), never
the other way round. Checked in a fresh interpreter, since a test process has imported
everything already."""

from __future__ import annotations

from tests.factories import run_python

WEBHOOK_MODULES = (
    "service.webhooks",
    "service.webhooks.dispatcher",
    "service.webhooks.guard",
    "service.webhooks.signing",
)


def test_the_webhooks_never_import_the_api() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {WEBHOOK_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "api = sorted(m for m in sys.modules if m.split('.')[:2] == ['service', 'api'])\n"
        "assert not api, f'service.webhooks imported {api}'\n"
    )
    run_python(code)
