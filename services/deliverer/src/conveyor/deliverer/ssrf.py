"""SSRF guard: callbacks reach only public addresses, checked on the address actually dialled.

The guard is an httpcore network backend. For every new connection it resolves the host
itself, refuses the whole connection if ANY resolved address is non-public (so a name that
answers with one public and one internal address is refused too), and then connects to the
checked IP, never to the name: a DNS answer that changes between check and connect (DNS
rebinding) cannot slip an internal address through. TLS still verifies the certificate
against the host name (httpcore passes the URL's host as server_hostname).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable

import httpcore

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
    """The callback host resolves to an address callbacks may not reach."""

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

    def __init__(self, allowed: Iterable[IPNetwork] = ()) -> None:
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

    def check(self, host: str, ip: IPAddress) -> None:
        reason = self.refusal(ip)
        if reason is not None:
            raise BlockedAddressError(host, str(ip), reason)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int, timeout: float | None) -> list[IPAddress]:
    """All addresses ``host`` resolves to, in resolver order, without duplicates."""
    if (ip := _literal(host)) is not None:
        return [ip]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    seen: dict[IPAddress, None] = {}
    for *_, sockaddr in infos:
        # A scoped IPv6 address ("fe80::1%eth0") is link-local: drop the scope, keep the check.
        seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]), None)
    if not seen:
        raise httpcore.ConnectError(f"{host} resolves to no address")
    return list(seen)


Resolver = Callable[[str, int, float | None], Awaitable[list[IPAddress]]]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend that resolves, checks every address, and dials the checked IP."""

    def __init__(
        self,
        policy: AddressPolicy,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()
        self.resolve = resolver or resolve

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port, timeout)
        for ip in addresses:
            self.policy.check(host, ip)
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError(path, path, "unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
