"""The SSRF guard with the real HTTP client against a real sink on 127.0.0.1."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpcore
import pytest

from conveyor.deliverer.sender import build_client, post
from conveyor.deliverer.ssrf import AddressPolicy, BlockedAddressError, GuardedBackend, IPAddress

PUBLIC = ipaddress.ip_address("93.184.215.14")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),
        ("192.0.2.7", "private"),
        ("240.0.0.1", "private"),
    ],
)
def test_policy_refuses_non_public_addresses(address: str, reason: str) -> None:
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) == reason


def test_policy_allows_public_addresses_and_allowed_networks() -> None:
    assert AddressPolicy().refusal(PUBLIC) is None
    assert AddressPolicy().refusal(ipaddress.ip_address("2606:4700::1111")) is None
    allowed = AddressPolicy([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")])
    assert allowed.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert allowed.refusal(ipaddress.ip_address("::1")) is None
    assert allowed.refusal(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert allowed.refusal(ipaddress.ip_address("10.0.0.1")) == "private"
    assert allowed.refusal(ipaddress.ip_address("169.254.169.254")) == "cloud metadata"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/cb", "loopback"),
        ("http://10.0.0.1:{port}/cb", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]:{port}/cb", "loopback"),
        ("http://localhost:{port}/cb", "loopback"),  # a name that resolves to loopback
        ("http://[::ffff:127.0.0.1]:{port}/cb", "loopback"),
        ("http://0.0.0.0:{port}/cb", "unspecified"),
    ],
)
async def test_client_refuses_before_connecting(sink: Any, url: str, reason: str) -> None:
    port = sink.port
    async with build_client(AddressPolicy(), timeout_s=2, max_connections=4) as client:
        attempt = await post(client, url.format(port=port), b"{}", {}, timeout_s=2)
    assert attempt.kind == "refused"
    assert attempt.status_code is None
    assert attempt.error is not None and f"is a {reason} address" in attempt.error
    assert "CALLBACK_ALLOWED_NETWORKS" in attempt.error
    assert sink.requests == []


async def test_client_reaches_allowed_network(sink: Any) -> None:
    port = sink.port
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])
    async with build_client(policy, timeout_s=2, max_connections=4) as client:
        for host in ("127.0.0.1", "localhost"):
            attempt = await post(client, f"http://{host}:{port}/cb", b"{}", {}, timeout_s=2)
            assert attempt.kind == "ok", attempt
    assert len(sink.requests) == 2


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the socket layer: records what it was asked to dial, dials nothing."""

    def __init__(self) -> None:
        self.dialled: list[str] = []

    async def connect_tcp(
        self, host: str, port: int, *args: object, **kw: object
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append(host)
        raise httpcore.ConnectError("not dialling in tests")


async def test_guard_dials_the_checked_address_so_rebinding_cannot_pass() -> None:
    answers = [[PUBLIC], [ipaddress.ip_address("127.0.0.1")]]
    lookups: list[str] = []

    async def rebinding_dns(host: str, port: int, timeout: float | None) -> list[IPAddress]:
        lookups.append(host)
        return answers.pop(0)  # public on the first lookup, loopback on the next

    inner = RecordingBackend()
    guard = GuardedBackend(AddressPolicy(), inner=inner, resolver=rebinding_dns)
    with pytest.raises(httpcore.ConnectError):
        await guard.connect_tcp("rebind.example", 80, timeout=1)
    # One lookup, and the socket layer got the checked IP, never the name to resolve again.
    assert lookups == ["rebind.example"] and inner.dialled == [str(PUBLIC)]
    # The next connection resolves again, and that answer is checked too.
    with pytest.raises(BlockedAddressError, match="loopback"):
        await guard.connect_tcp("rebind.example", 80, timeout=1)
    assert inner.dialled == [str(PUBLIC)]


async def test_guard_refuses_a_name_with_any_internal_address() -> None:
    async def mixed(host: str, port: int, timeout: float | None) -> list[IPAddress]:
        return [PUBLIC, ipaddress.ip_address("10.1.2.3")]

    inner = RecordingBackend()
    guard = GuardedBackend(AddressPolicy(), inner=inner, resolver=mixed)
    with pytest.raises(BlockedAddressError, match=r"mixed\.example \(10\.1\.2\.3\) is a private address"):
        await guard.connect_tcp("mixed.example", 443, timeout=1)
    assert inner.dialled == []


async def test_invalid_urls_are_refused() -> None:
    async with build_client(AddressPolicy(), timeout_s=2, max_connections=1) as client:
        for url in ("ftp://example.com/x", "not a url", "http:///nohost", "file:///etc/passwd"):
            attempt = await post(client, url, b"{}", {}, timeout_s=2)
            assert attempt.kind == "refused" and attempt.error and "invalid callback URL" in attempt.error, (
                url
            )
