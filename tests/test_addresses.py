"""The key per-address limits count by: an IPv4 address, or an IPv6 /64."""

from __future__ import annotations

import pytest

from chatapp.addresses import limit_key, normalize_host


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),  # the key itself (chatapp-admin unblock takes it)
    ],
)
def test_an_ipv6_host_is_counted_by_its_64_an_ipv4_one_by_itself(host: str, key: str) -> None:
    assert limit_key(host) == key


@pytest.mark.parametrize("text", ["", "example.com", "192.0.2.0/24", "2001:db8::/48", "2001:db8::/96", "1.2.3"])
def test_anything_else_is_not_a_key(text: str) -> None:
    with pytest.raises(ValueError):
        limit_key(text)


def test_normalize_keeps_the_whole_address() -> None:
    assert normalize_host("2001:DB8::0001") == "2001:db8::1"
    assert normalize_host("::ffff:127.0.0.5") == "127.0.0.5"
