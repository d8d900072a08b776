"""Signed webhooks: a job's final state POSTed to the ``webhook_url`` it was submitted with.

The pieces, in the order a notification passes them:

- the SSRF guard (:mod:`service.webhooks.guard`) checks the URL at submission (422) and
  again before every attempt;
- the job's final transition (a Lua script of :mod:`service.queue.scripts`) queues the
  notification in the ``webhooks`` due-set in the same atomic step, so a crash cannot
  lose it; :mod:`service.queue.webhooks` claims and settles entries of that set;
- the dispatcher (:mod:`service.webhooks.dispatcher`), an asyncio task of the API
  process, delivers due ones, signed per Standard Webhooks
  (:mod:`service.webhooks.signing`), and retries on 5xx, timeouts and connection errors.
"""

from service.webhooks.dispatcher import WebhookDispatcher, run_dispatcher
from service.webhooks.guard import WebhookTarget, accept_webhook_url, check_url
from service.webhooks.signing import (
    SignatureError,
    message_id,
    sign,
    signature_headers,
    verify,
)

__all__ = [
    "SignatureError",
    "WebhookDispatcher",
    "WebhookTarget",
    "accept_webhook_url",
    "check_url",
    "message_id",
    "run_dispatcher",
    "sign",
    "signature_headers",
    "verify",
]
