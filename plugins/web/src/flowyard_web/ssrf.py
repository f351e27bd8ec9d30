"""The SSRF guard of ``web.fetch``: which addresses a URL may reach.

A URL passes when its scheme is ``http`` or ``https`` and *every* address its host resolves
to is public, or lies in an allow-listed network. Numeric host spellings that the C library
accepts (``2130706433``, ``0x7f000001``, ``127.1``, ``0177.0.0.1``) are decoded as the IPv4
addresses they denote; IPv6 addresses embedding an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
6to4, Teredo, NAT64 ``64:ff9b::/96``) are judged by the embedded address too. The caller then
connects to the address that was checked, never resolving the name a second time.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Union

import anyio
import attrs
from flowyard import ToolError

__all__ = [
    "AddressPolicy",
    "BlockedURLError",
    "IPAddress",
    "Resolver",
    "blocked_reason",
    "parse_ip_literal",
    "system_resolver",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: ``resolver(host, port) -> addresses``; the default uses the system resolver.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_V4 = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)(\.(0[xX][0-9a-fA-F]+|[0-9]+)){0,3}$")


class BlockedURLError(ToolError):
    """The SSRF guard refused a URL or a redirect target (not retriable)."""

    def __init__(self, message: str, *, url: str, tool: str = "web.fetch") -> None:
        super().__init__(message, tool=tool, retriable=False)
        self.url = url


def parse_ip_literal(host: str) -> IPAddress | None:
    """Return the address a host string denotes literally, or None for a name.

    Accepts dotted IPv4, IPv6 (with or without brackets and zone), and the numeric IPv4 forms
    of ``inet_aton``: one to four parts, each decimal, octal (leading 0) or hex (0x).
    """
    text = host.strip().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text.split("%", 1)[0] if ":" in text else text)
    except ValueError:
        pass
    if _NUMERIC_V4.match(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    # IPv4-compatible (deprecated ::a.b.c.d)
    if int(ip) >> 32 == 0 and int(ip) > 0xFFFF:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def blocked_reason(ip: IPAddress) -> str | None:
    """Say why ``ip`` is not a public address (``"loopback"``, ``"private"``, ...), or None.

    The categories come from :mod:`ipaddress` (IANA special-purpose registries).
    """
    if ip in _METADATA:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_v4(ip):
            reason = blocked_reason(inner)
            if reason:
                return f"embeds {inner} ({reason})"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
    )
    for name, hit in checks:
        if hit:
            return name
    if not ip.is_global:
        return "not globally routable"
    return None


@attrs.frozen
class AddressPolicy:
    """Which addresses may be fetched.

    Args:
        allow_networks: networks (CIDR, or single addresses) that pass even though they are not
            public, e.g. ``["127.0.0.1/32"]`` for a local service.
    """

    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_strings(cls, networks: Iterable[str]) -> AddressPolicy:
        """Parse CIDR strings.

        Raises:
            ValueError: an entry is not a network or address (the message names it).
        """
        parsed = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(str(text), strict=False))
            except ValueError as exc:
                raise ValueError(f"not an IP network: {text!r} ({exc})") from None
        return cls(tuple(parsed))

    def allowed(self, ip: IPAddress) -> bool:
        """True when ``ip`` is in an allow-listed network."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c.version == n.version and c in n for c in candidates
                   for n in self.allow_networks)

    def check(self, ip: IPAddress) -> str | None:
        """Return why ``ip`` is refused, or None when it may be fetched."""
        if self.allowed(ip):
            return None
        return blocked_reason(ip)


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver (``getaddrinfo``, TCP); return addresses.

    Raises:
        OSError (socket.gaierror): the name does not resolve.
    """
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


async def resolve_checked(host: str, port: int, policy: AddressPolicy, resolver: Resolver,
                          *, url: str) -> IPAddress:
    """Resolve ``host`` and check every address; return the one to connect to.

    Raises:
        BlockedURLError: an address is refused (the message names host, address and reason).
        ToolError: the name does not resolve (retriable).
    """
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            # "name." is the same fully qualified name as "name"
            raw = await resolver(host.rstrip(".") or host, port)
        except OSError as exc:
            raise ToolError(f"web.fetch: cannot resolve {host!r}: {exc}", tool="web.fetch",
                            retriable=True) from exc
        addresses = []
        for text in raw:
            parsed = parse_ip_literal(text)
            if parsed is None:
                raise BlockedURLError(f"web.fetch: resolver returned a non-address {text!r} "
                                      f"for {host!r}", url=url)
            addresses.append(parsed)
        if not addresses:
            raise ToolError(f"web.fetch: {host!r} resolves to no address", tool="web.fetch",
                            retriable=True)
    for ip in addresses:
        reason = policy.check(ip)
        if reason:
            how = "resolves to" if literal is None else "is the address"
            raise BlockedURLError(f"web.fetch: blocked {url}: host {host!r} {how} {ip}, a "
                                  f"{reason} address; allow it with [web] allow_networks",
                                  url=url)
    return addresses[0]
