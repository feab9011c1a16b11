"""The key under which a network address is counted, limited and blocked.

Per-address limits (connections, handshakes, failed logins, signups) count an
IPv4 address as itself, but an IPv6 address as its /64: one host, or one home,
is given a whole /64, so counting each of its 2**64 addresses apart would make
every such limit free to step around. An IPv4-mapped IPv6 address is its IPv4
address.
"""

from __future__ import annotations

import ipaddress

IPV6_GROUP = 64  # prefix length an IPv6 address is counted by


def normalize_host(host: str) -> str:
    """Canonical text of an IP address; an IPv4-mapped IPv6 address becomes its IPv4 form.

    Raises ValueError if ``host`` is no IP address (a zone after ``%`` is dropped).
    """
    address = ipaddress.ip_address(host.split("%", 1)[0] if ":" in host else host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def limit_key(host: str) -> str:
    """The key ``host`` is counted under: its IPv4 address, or its IPv6 /64 (``2001:db8:1:2::/64``).

    Also takes such a /64 itself. Raises ValueError for anything that is no IP address.
    """
    if "/" in host:
        network = ipaddress.ip_network(host, strict=False)
        if network.version != 6 or network.prefixlen != IPV6_GROUP:
            raise ValueError(f"not an IPv6 /{IPV6_GROUP}: {host!r}")
        return str(network)
    text = normalize_host(host)
    if ":" not in text:
        return text
    return str(ipaddress.ip_network(f"{text}/{IPV6_GROUP}", strict=False))


def counted_as(host: str) -> str:
    """What a connection from ``host`` is counted under: :func:`limit_key`, or ``host`` itself when it is no
    IP address (a UNIX socket, a test's stand-in). An IPv4 address gives back the very string it was
    given: no second copy of it is held per connection."""
    try:
        key = limit_key(host)
    except ValueError:
        return host
    return host if key == host else key
