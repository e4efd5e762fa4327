"""The SSRF guard with the real HTTP client against a real sink on 127.0.0.1."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from conveyor.deliverer.http_client import CallbackClient
from conveyor.deliverer.sender import build_client, post
from conveyor.shared.runtime.ssrf import AddressPolicy, BlockedAddressError

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
        # Forms that embed an IPv4 address, or are non-global, that Python calls global.
        ("2002:7f00:1::1", "6to4"),  # 127.0.0.1 in 6to4
        ("2002:a00:1::", "6to4"),  # 10.0.0.1
        ("2002:808:808::1", "6to4"),  # deprecated, even around a public address
        ("192.88.99.1", "6to4 relay"),
        ("fec0::1", "site-local"),
        ("3fff::1", "documentation"),
        ("2001:db8::1", "documentation"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("64:ff9b::7f00:1", "NAT64 loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", "NAT64 private"),
        ("64:ff9b::a9fe:a9fe", "NAT64 cloud metadata"),
        ("64:ff9b:1::a00:1", "local-use NAT64"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("::ffff:10.0.0.1", "private"),
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
    # NAT64 is judged by the IPv4 address it carries: DNS64 answers this for public names.
    assert AddressPolicy().refusal(ipaddress.ip_address("64:ff9b::808:808")) is None
    # The translator's 127.0.0.1 is not this host's: allowing 127.0.0.0/8 does not allow it.
    assert allowed.refusal(ipaddress.ip_address("64:ff9b::7f00:1")) == "NAT64 loopback"
    assert (
        AddressPolicy([ipaddress.ip_network("2002::/16")]).refusal(ipaddress.ip_address("2002:7f00:1::1"))
        is None
    )


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
        ("http://[2002:7f00:1::1]:{port}/cb", "6to4"),
        ("http://[fec0::1]:{port}/cb", "site-local"),
        ("http://[64:ff9b::7f00:1]:{port}/cb", "NAT64 loopback"),
    ],
)
async def test_client_refuses_before_connecting(sink: Any, url: str, reason: str) -> None:
    async with build_client(AddressPolicy(), max_connections=4) as client:
        attempt = await post(client, url.format(port=sink.port), b"{}", {}, timeout_s=2)
    assert attempt.kind == "refused", attempt
    assert attempt.status_code is None
    assert attempt.error is not None and f"is a {reason} address" in attempt.error
    assert "CALLBACK_ALLOWED_NETWORKS" in attempt.error
    assert sink.requests == []


async def test_client_reaches_allowed_network(sink: Any) -> None:
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")])
    async with build_client(policy, max_connections=4) as client:
        for host in ("127.0.0.1", "localhost"):  # the sink listens on 127.0.0.1 only
            attempt = await post(client, f"http://{host}:{sink.port}/cb", b"{}", {}, timeout_s=2)
            assert attempt.kind == "ok", (host, attempt)
    assert len(sink.requests) == 2


class ScriptedDns:
    """A DNS server whose answers change between lookups, as in a rebinding attack."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers.pop(0)


async def test_guard_dials_the_checked_address_so_rebinding_cannot_pass(sink: Any) -> None:
    # First answer: an address the policy allows; later answers: one it does not.
    dns = ScriptedDns([["127.0.0.1"], ["10.9.8.7"], ["127.0.0.1", "10.9.8.7"]])
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])
    async with CallbackClient(policy, max_connections=4, user_agent="test", resolver=dns) as client:
        url = f"http://rebind.example:{sink.port}/cb"  # no such name in real DNS
        first = await post(client, url, b"{}", {"Connection": "close"}, timeout_s=2)
        assert first.kind == "ok", first
        # The connection went to the address that was checked (the sink), for that name.
        assert sink.requests[0].headers["host"] == f"rebind.example:{sink.port}"
        # The next connection resolves again, and that answer is checked again.
        second = await post(client, url, b"{}", {}, timeout_s=2)
        assert (
            second.kind == "refused"
            and second.error
            and "rebind.example (10.9.8.7) is a private" in second.error
        )
        # One internal address among the answers refuses the name, even next to an allowed one.
        third = await post(client, url, b"{}", {}, timeout_s=2)
        assert third.kind == "refused"
    assert dns.lookups == ["rebind.example"] * 3 and len(sink.requests) == 1


async def test_a_name_answering_an_embedded_internal_address_is_refused(sink: Any) -> None:
    """The allowed networks let 127.0.0.1 through; its 6to4 and NAT64 forms are not it."""
    dns = ScriptedDns([["2002:7f00:1::1"], ["64:ff9b::7f00:1"], ["fec0::1"]])
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])
    async with CallbackClient(policy, max_connections=4, user_agent="test", resolver=dns) as client:
        url = f"http://embedded.example:{sink.port}/cb"
        kinds = [await post(client, url, b"{}", {}, timeout_s=2) for _ in range(3)]
    assert [a.kind for a in kinds] == ["refused"] * 3, kinds
    assert [a.error and a.error.split(" is a ")[1].split(" address")[0] for a in kinds] == [
        "6to4",
        "NAT64 loopback",
        "site-local",
    ]
    assert sink.requests == []


def test_check_names_the_exact_address_and_ignores_an_ipv6_scope() -> None:
    policy = AddressPolicy()
    with pytest.raises(BlockedAddressError, match=r"169\.254\.169\.254 is a cloud metadata address"):
        policy.check("169.254.169.254", "169.254.169.254")
    with pytest.raises(BlockedAddressError, match=r"\(fe80::1\) is a link-local address"):
        policy.check("host.example", "fe80::1%2")
    with pytest.raises(BlockedAddressError, match="unparseable"):
        policy.check("host.example", "not-an-ip")
    policy.check("93.184.215.14", "93.184.215.14")  # public: no exception


async def test_invalid_urls_are_refused() -> None:
    async with build_client(AddressPolicy(), max_connections=1) as client:
        for url in (
            "ftp://example.com/x",
            "not a url",
            "http:///nohost",
            "file:///etc/passwd",
            "http://2130706433/",
            f"http://{'a' * 64}.example/",
            "http://a..example/",
        ):
            attempt = await post(client, url, b"{}", {}, timeout_s=2)
            assert attempt.kind == "refused", (url, attempt)
