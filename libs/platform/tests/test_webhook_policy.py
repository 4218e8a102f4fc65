"""Where a webhook may be sent (unit): every denied range, the operator's two exceptions,
IPv4-mapped IPv6, credentials in the URL, schemes; and that no refusal repeats the URL."""

from __future__ import annotations

import ipaddress

import pytest
from tidemark_platform.webhook_policy import (
    MAX_URL_LENGTH,
    WebhookPolicy,
    WebhookPolicySettings,
    is_denied,
)

DEFAULT = WebhookPolicy()

DENIED = [
    "10.0.0.1",  # RFC 1918
    "10.255.255.254",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "127.0.0.1",  # loopback
    "127.8.9.10",
    "169.254.169.254",  # link-local: the cloud metadata service
    "169.254.0.1",
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.254",
    "0.0.0.0",  # unspecified  # noqa: S104
    "0.1.2.3",  # "this network"
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    "192.0.2.10",  # documentation
    "198.51.100.7",
    "203.0.113.9",
    "198.18.0.1",  # benchmarking
    "192.0.0.1",  # IETF protocol assignments
    "100::1",  # IPv6 discard-only
    "::1",  # IPv6 loopback
    "::",  # unspecified
    "fe80::1",  # link-local
    "fc00::1",  # unique local
    "fd00:ec2::254",  # AWS metadata over IPv6
    "ff02::1",  # multicast
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2001:db8::1",  # documentation
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",  # IPv4-mapped metadata
    "::ffff:10.1.2.3",
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata address
    "2002:808:808::1",  # 6to4 at all: a relay could carry it anywhere
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", DENIED)
def test_every_private_or_special_range_is_denied(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert is_denied(ip)
    assert not DEFAULT.address_allowed(ip, "hooks.example.com")


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_denied(ip)
    assert DEFAULT.address_allowed(ip, "hooks.example.com")


def test_an_allowed_host_may_resolve_anywhere_but_only_that_host() -> None:
    policy = WebhookPolicy.parse("127.0.0.1, Receiver.Local ,[::1]", "")
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.address_allowed(loopback, "127.0.0.1")
    assert policy.address_allowed(loopback, "receiver.local")  # case-insensitive
    assert policy.address_allowed(ipaddress.ip_address("::1"), "[::1]")
    assert not policy.address_allowed(loopback, "other.example.com")
    assert not policy.address_allowed(ipaddress.ip_address("169.254.169.254"), "evil.example")


def test_an_allowed_network_opens_that_range_only() -> None:
    policy = WebhookPolicySettings(
        TIDEMARK_WEBHOOK_ALLOWED_NETWORKS="10.20.0.0/16, fd12:3456::/32"
    ).policy()
    assert policy.address_allowed(ipaddress.ip_address("10.20.1.2"), "hooks.internal")
    assert policy.address_allowed(ipaddress.ip_address("fd12:3456::9"), "hooks.internal")
    # The same range reached through an IPv4-mapped IPv6 address.
    assert policy.address_allowed(ipaddress.ip_address("::ffff:10.20.1.2"), "hooks.internal")
    assert not policy.address_allowed(ipaddress.ip_address("10.21.0.1"), "hooks.internal")
    assert not policy.address_allowed(ipaddress.ip_address("::ffff:10.21.0.1"), "h.internal")
    assert not policy.address_allowed(ipaddress.ip_address("127.0.0.1"), "hooks.internal")


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDEMARK_WEBHOOK_ALLOWED_HTTP_HOSTS", "127.0.0.1,localhost")
    monkeypatch.setenv("TIDEMARK_WEBHOOK_ALLOWED_NETWORKS", "192.168.0.0/16")
    policy = WebhookPolicySettings().policy()
    assert policy.allowed_http_hosts == frozenset({"127.0.0.1", "localhost"})
    assert policy.check_url("http://127.0.0.1:8080/hook") is None
    assert policy.address_allowed(ipaddress.ip_address("192.168.3.4"), "hooks.lan")


def test_https_to_a_public_host_is_accepted() -> None:
    assert DEFAULT.check_url("https://hooks.example.com/tidemark?x=1") is None
    assert DEFAULT.check_url("https://93.184.216.34:8443/hook") is None
    assert DEFAULT.check_url("https://[2606:4700:4700::1111]/hook") is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "must use https"),
        ("javascript:alert(1)", "must use https"),
        ("file:///etc/passwd", "must use https"),
        ("hooks.example.com/x", "must use https"),
        ("http://hooks.example.com/x", "plain http only to hosts the operator allows"),
        ("https:///x", "no host"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://token@hooks.example.com/x", "credentials"),
        ("https://hooks.example.com/x#frag", "fragment"),
        ("https://hooks.example.com:0/x", "port is not valid"),
        ("https://hooks.example.com:99999/x", "not a valid URL"),
        ("https://hooks.example.com/a b", "whitespace"),
        ("https://hooks.example.com/\x00", "control"),
        ("https://127.0.0.1/x", "private, loopback"),
        ("https://169.254.169.254/latest/meta-data", "private, loopback"),
        ("https://[::1]/x", "private, loopback"),
        ("https://[::ffff:127.0.0.1]/x", "private, loopback"),
        ("https://[::ffff:a9fe:a9fe]/x", "private, loopback"),
        ("https://10.0.0.5/x", "private, loopback"),
        ("https://localhost/x", "private, loopback"),
        ("https://api.localhost/x", "private, loopback"),
        ("https://h.example.com/" + "a" * MAX_URL_LENGTH, "longer than"),
        # The HTTP client refuses non-ASCII URLs at every delivery: refused once, here.
        ("https://hooks.example.com/caf\u00e9", "ASCII"),
        ("https://b\u00fccher.example.com/x", "ASCII"),
    ],
)
def test_refused_urls_say_why_without_repeating_the_url(url: str, reason: str) -> None:
    refusal = DEFAULT.check_url(url)
    assert refusal is not None
    assert reason in refusal
    assert "example.com" not in refusal
    assert "user" not in refusal
    assert "pw@" not in refusal
    assert "127.0.0.1" not in refusal


def test_plain_http_is_allowed_only_to_the_operators_hosts() -> None:
    policy = WebhookPolicy.parse("127.0.0.1,localhost", "")
    assert policy.check_url("http://127.0.0.1:9000/hook") is None
    assert policy.check_url("http://localhost:9000/hook") is None
    assert policy.check_url("http://127.0.0.2:9000/hook") is not None
    assert policy.check_url("http://hooks.example.com/hook") is not None
    # Allowed over http does not allow credentials in the URL.
    refusal = policy.check_url("http://me:secret@127.0.0.1:9000/hook")
    assert refusal is not None
    assert "secret" not in refusal


def test_an_allowed_network_admits_a_literal_private_url() -> None:
    policy = WebhookPolicy.parse("", "10.0.0.0/8")
    assert policy.check_url("https://10.1.2.3/hook") is None
    assert policy.check_url("https://[::ffff:10.1.2.3]/hook") is None
    assert policy.check_url("https://192.168.1.1/hook") is not None
