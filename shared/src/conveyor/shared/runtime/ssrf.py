"""SSRF guard: outbound requests to addresses users chose (the deliverer's callbacks, the
executor's http_fetch tool) reach only public addresses, checked on the address actually dialled.

The policy is applied by the client on every new connection (the deliverer's ``http_client``,
the executor's ``tools.http_fetch``): a
name's answers are checked as a whole, and one non-public answer refuses the name (a host
that answers with one public and one internal address is refused); the client then dials
only the addresses it checked and never resolves again for that connection, so a DNS answer
that changes between check and connect (DNS rebinding) cannot slip through. IP-literal URLs
are checked as they are. TLS still verifies the certificate against the URL's host name.
"""

from __future__ import annotations

import ipaddress

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

# Refused by name, whatever Python's ipaddress tables say of them (they differ between Python
# versions, and 3.11 calls the first three global): a callback has no business there.
REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(n), kind)
    for n, kind in (
        # 6to4 (RFC 3056, deprecated by RFC 7526) carries an IPv4 address in bits 16-47:
        # 2002:7f00:1::1 is 127.0.0.1's and 2002:a00:1:: 10.0.0.1's, and a relay or a 6to4
        # router of the deliverer's own network turns it into a packet for that address.
        ("2002::/16", "6to4"),
        ("192.88.99.0/24", "6to4 relay"),
        ("fec0::/10", "site-local"),  # deprecated (RFC 3879) but still routed inside some networks
        ("3fff::/20", "documentation"),  # RFC 9637
        ("2001:db8::/32", "documentation"),
        ("2001::/32", "Teredo"),  # carries its server's and (obfuscated) client's IPv4 addresses
        ("64:ff9b:1::/48", "local-use NAT64"),  # RFC 8215: the embedding is the network's own
        ("::/96", "IPv4-compatible"),  # deprecated (RFC 4291); ::127.0.0.1
    )
)
_REFUSED = {v: tuple((n, k) for n, k in REFUSED_NETWORKS if n.version == v) for v in (4, 6)}
# The well-known NAT64 prefix (RFC 6052): a translator dials the IPv4 address in the last 32
# bits, so the address is judged by that one. DNS64 gives IPv6-only hosts such answers for
# every IPv4-only name, so the public ones must pass.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddressError(Exception):
    """The host resolves to an address the policy's requests may not reach.

    Not an OSError on purpose: the client must not take it for a connection failure to be
    retried on the next address or the next attempt."""

    def __init__(
        self,
        host: str,
        address: str,
        reason: str,
        what: str = "callback",
        setting: str = "CALLBACK_ALLOWED_NETWORKS",
    ) -> None:
        shown = host if host == address else f"{host} ({address})"
        super().__init__(f"{what} refused: {shown} is a {reason} address ({setting} can allow it)")
        self.host = host
        self.address = address
        self.reason = reason


class AddressPolicy:
    """Which addresses requests may reach: public unicast ones, plus the allowed networks.
    ``what`` and ``setting`` name the requests and the setting that allows more, in refusals."""

    def __init__(
        self,
        allowed: tuple[IPNetwork, ...] | list[IPNetwork] = (),
        *,
        what: str = "callback",
        setting: str = "CALLBACK_ALLOWED_NETWORKS",
    ) -> None:
        self.allowed = tuple(allowed)
        self.what = what
        self.setting = setting

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` is refused, or None when it may be reached."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1, on this very host
        if any(ip in net for net in self.allowed if net.version == ip.version):
            return None
        return kind_of(ip)

    def check(self, host: str, address: str) -> None:
        """Raise BlockedAddressError unless ``address`` (an IP, maybe with a %scope) may be reached."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise BlockedAddressError(host, address, "unparseable", self.what, self.setting) from None
        reason = self.refusal(ip)
        if reason is not None:
            raise BlockedAddressError(host, str(ip), reason, self.what, self.setting)


def kind_of(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is, or None for a public one."""
    if ip.version == 6 and ip in NAT64:
        # The translator's view of the IPv4 address, not ours: an allowed 127.0.0.0/8 is this
        # host's loopback, not the translator's, so only an allowed IPv6 network lets it through.
        embedded = kind_of(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return None if embedded is None else f"NAT64 {embedded}"
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
    for net, kind in _REFUSED[ip.version]:
        if ip in net:
            return kind
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "non-public"
    return None


def parse_networks(text: str, setting: str) -> list[IPNetwork]:
    """Comma-separated CIDRs (a setting's value); ValueError naming the setting and the bad one."""
    nets: list[IPNetwork] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            nets.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{setting}: {part.strip()!r} is not a CIDR") from None
    return nets
