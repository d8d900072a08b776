"""The SSRF guard: which URLs the service may POST a job's final state to.

A webhook makes the service send a request to an address a client chose, from inside
the deployment's network: without a guard, ``http://169.254.169.254/`` (cloud metadata),
``http://localhost:6379/`` or ``http://10.0.0.5/admin`` would be reachable through it.
So a URL must be http(s) and its host must resolve to public addresses only (every
address, after DNS: a name cannot smuggle in a private one), unless the operator lists
the host in ``HDR_WEBHOOK_ALLOWED_HOSTS``. When that list is set it is also a strict
allowlist: hosts not matching it are refused whatever they resolve to.

The check runs at submission (a refused URL is a 422 then) and again before every
attempt, since DNS answers change; the dispatcher then connects to the very addresses
checked here (:attr:`WebhookTarget.addresses`), so a second, different DNS answer
(rebinding) cannot redirect the request. Redirects are never followed (a 3xx is a failed
delivery) for the same reason.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import httpx

from service.config import Settings
from service.errors import InvalidWebhookUrl

#: Longest webhook_url accepted (also the form field's bound).
MAX_URL_CHARS: Final = 2048
SCHEMES: Final = frozenset({"http", "https"})
#: What a host may look like after IDNA encoding: a DNS name (underscores occur in real
#: names), an IPv4 address, or an IPv6 address (httpx strips the brackets).
_HOST: Final = re.compile(r"[a-z0-9_.-]+|[0-9a-f:.%a-z]*:[0-9a-f:.%a-z]*")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnresolvedHost(InvalidWebhookUrl):
    """The host has no address, or DNS did not answer in time.

    At submission a 422 like any refused URL; at delivery a transient failure (the
    receiver's DNS may be down for a while), retried like a connection error. So, unlike
    its parent, it is ``retryable``: the same URL may resolve later.
    """

    retryable = True


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL and the addresses it may be sent to."""

    url: httpx.URL
    host: str
    """The URL's host as sent in ``Host`` and TLS SNI (ASCII, IDNA-encoded)."""
    addresses: tuple[str, ...]
    """Resolved addresses that passed the check, in resolver order."""
    allowlisted: bool


def _kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused without an allowlist entry (None: a public unicast address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("an unspecified", ip.is_unspecified),
        ("a multicast", ip.is_multicast),
        ("a private", ip.is_private),
        ("a reserved", ip.is_reserved),
    ):
        if flag:
            return kind
    return None if ip.is_global else "a non-public"


def matches(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` matches one of the fnmatch ``patterns`` (case-insensitive)."""
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in patterns)


async def _resolve(host: str, port: int, timeout: float) -> tuple[str, ...]:
    """Every address ``host`` resolves to (getaddrinfo runs in the loop's thread pool)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return (host,)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except (socket.gaierror, UnicodeError):
        raise UnresolvedHost(f"webhook_url: host {host!r} does not resolve") from None
    except TimeoutError:
        raise UnresolvedHost(f"webhook_url: host {host!r} did not resolve in time") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnresolvedHost(f"webhook_url: host {host!r} has no address")
    return tuple(addresses)


async def check_url(url: str, allowed_hosts: Sequence[str], timeout: float) -> WebhookTarget:
    """Parse, resolve and check ``url``; raises :class:`InvalidWebhookUrl` naming why."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidWebhookUrl(f"webhook_url: longer than {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InvalidWebhookUrl(f"webhook_url: not a valid URL ({exc})") from None
    if parsed.scheme not in SCHEMES:
        shown = parsed.scheme or "none"
        raise InvalidWebhookUrl(f"webhook_url: the scheme must be http or https, not {shown}")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise InvalidWebhookUrl("webhook_url: no host")
    if not _HOST.fullmatch(host):
        raise InvalidWebhookUrl(f"webhook_url: {host!r} is not a valid host name or address")
    allowlisted = matches(host, allowed_hosts)
    if allowed_hosts and not allowlisted:
        raise InvalidWebhookUrl(
            f"webhook_url: host {host!r} is not one this server sends webhooks to"
        )
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise InvalidWebhookUrl(f"webhook_url: port {parsed.port} is out of range")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await _resolve(host, port, timeout)
    if not allowlisted:
        for address in addresses:
            kind = _kind(ipaddress.ip_address(address.split("%", 1)[0]))
            if kind is not None:
                raise InvalidWebhookUrl(
                    f"webhook_url: host {host!r} resolves to {address}, {kind} address;"
                    " webhooks go to public addresses only"
                )
    return WebhookTarget(url=parsed, host=host, addresses=addresses, allowlisted=allowlisted)


async def accept_webhook_url(url: str | None, settings: Settings) -> str | None:
    """The webhook_url of a submission, checked (None when the form has none).

    Refused (422) when this server has no signing key: an unsigned webhook could not be
    told from a forged one by its receiver.
    """
    if url is None:
        return None
    if settings.webhook_secret is None:
        raise InvalidWebhookUrl(
            "webhook_url: this server sends no webhooks (it has no signing key configured)"
        )
    await check_url(url, settings.webhook_allowed_hosts, settings.webhook_timeout_seconds)
    return url
