"""SSRF guard: callbacks reach only public addresses, checked on the address actually dialled.

Two hooks in the HTTP client's connector (aiohttp), both with the same policy:
- the resolver: a name's answers are checked as a whole, and one non-public answer refuses
  the name, so a host that answers with one public and one internal address is refused;
  the connector then dials the IPs this resolver returned and never resolves again, so a
  DNS answer that changes between check and connect (DNS rebinding) cannot slip through;
- the socket factory: every socket is checked against the exact address it is about to
  connect to. This covers IP-literal URLs (the connector does not resolve those) and is
  the last word for anything else.
TLS still verifies the certificate against the URL's host name.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

if TYPE_CHECKING:  # aiohttp's own dependency; only its types are used here
    from aiohappyeyeballs import AddrInfoType, SocketFactoryType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Metadata endpoints of cloud providers. Most are also link-local or private and refused as
# such; the ones that are public addresses (Azure's wire server) are refused by name here.
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2/32",  # AWS ECS task metadata
        "168.63.129.16/32",  # Azure wire server
        "100.100.100.200/32",  # Alibaba Cloud
        "192.0.0.192/32",  # Oracle Cloud
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
    )
)


class BlockedAddressError(Exception):
    """The callback host resolves to an address callbacks may not reach.

    Not an OSError on purpose: the client must not take it for a connection failure to be
    retried on the next address or the next attempt."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        shown = host if host == address else f"{host} ({address})"
        super().__init__(
            f"callback refused: {shown} is a {reason} address (CALLBACK_ALLOWED_NETWORKS can allow it)"
        )
        self.host = host
        self.address = address
        self.reason = reason


class AddressPolicy:
    """Which addresses callbacks may reach: public unicast ones, plus the allowed networks."""

    def __init__(self, allowed: tuple[IPNetwork, ...] | list[IPNetwork] = ()) -> None:
        self.allowed = tuple(allowed)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` is refused, or None when it may be reached."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(ip in net for net in self.allowed if net.version == ip.version):
            return None
        if any(ip in net for net in METADATA_NETWORKS if net.version == ip.version):
            return "cloud metadata"
        if ip.is_unspecified:
            return "unspecified"
        if ip.is_loopback:
            return "loopback"
        if ip.is_link_local:
            return "link-local"
        if ip.is_multicast:
            return "multicast"
        if ip.is_private:
            return "private"
        if ip.is_reserved or not ip.is_global:
            return "non-public"
        return None

    def check(self, host: str, address: str) -> None:
        """Raise BlockedAddressError unless ``address`` (an IP, maybe with a %scope) may be reached."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise BlockedAddressError(host, address, "unparseable") from None
        reason = self.refusal(ip)
        if reason is not None:
            raise BlockedAddressError(host, str(ip), reason)


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses the name if any answer is not allowed."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        for answer in answers:
            self.policy.check(host, answer["host"])
        return answers

    async def close(self) -> None:
        await self.inner.close()


def guarded_socket_factory(policy: AddressPolicy) -> SocketFactoryType:
    """The connector's socket factory: checks the address each new socket will dial."""

    def make(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        policy.check(str(sockaddr[0]), str(sockaddr[0]))
        return socket.socket(family=family, type=type_, proto=proto)

    return make
