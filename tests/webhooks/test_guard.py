"""The SSRF guard: schemes, resolution, private address classes, the allowlist."""

from __future__ import annotations

import pytest

from service.errors import InvalidWebhookUrl
from service.webhooks import check_url

pytestmark = pytest.mark.anyio

TIMEOUT = 2.0


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),  # a name: refused by what it resolves to
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),  # IPv4-mapped IPv6
        ("http://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://[fd00::1]/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://100.64.0.1/hook", "non-public"),  # carrier-grade NAT
    ],
)
async def test_non_public_targets_are_refused_without_an_allowlist(url: str, kind: str) -> None:
    with pytest.raises(InvalidWebhookUrl, match=kind):
        await check_url(url, [], TIMEOUT)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/hook", "scheme must be http or https, not ftp"),
        ("file:///etc/passwd", "scheme must be http or https, not file"),
        ("example.com/hook", "scheme must be http or https, not none"),
        ("http:///hook", "no host"),
        ("http://exa mple.com/", "not a valid host"),
        ("http://example.com:99999/", "port 99999 is out of range"),
        ("http://[zz/", "not a valid"),
        ("http://no-such-host.invalid/hook", "does not resolve"),
        ("https://example.com/" + "a" * 2100, "longer than 2048"),
    ],
)
async def test_malformed_urls_are_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(InvalidWebhookUrl, match=problem):
        await check_url(url, [], TIMEOUT)


async def test_a_public_address_passes_and_is_what_the_dispatcher_connects_to() -> None:
    target = await check_url("https://93.184.215.14:8443/hook?x=1", [], TIMEOUT)
    assert target.addresses == ("93.184.215.14",)
    assert target.host == "93.184.215.14" and not target.allowlisted


async def test_an_allowlisted_host_may_be_loopback() -> None:
    target = await check_url("http://127.0.0.1:9/hook", ["127.0.0.1"], TIMEOUT)
    assert target.allowlisted and target.addresses == ("127.0.0.1",)
    named = await check_url("http://LocalHost:9/hook", ["local*"], TIMEOUT)
    assert named.host == "localhost" and named.allowlisted
    assert {"127.0.0.1", "::1"} >= set(named.addresses)


async def test_with_an_allowlist_other_hosts_are_refused_even_public_ones() -> None:
    with pytest.raises(InvalidWebhookUrl, match="not one this server sends webhooks to"):
        await check_url("https://93.184.215.14/hook", ["*.example.com"], TIMEOUT)
