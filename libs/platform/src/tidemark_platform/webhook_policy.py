"""Where webhooks may be sent: the one rule the gateway checks when a webhook is
registered and the alerts service checks again, on the resolved addresses, at every
delivery (a name can resolve elsewhere later).

A tenant chooses the URL and the alerts service sends it requests, so an unchecked URL
would let a tenant reach the runner's own network: its metadata service, its databases,
its admin ports. The rule:

- ``https`` only, or ``http`` to a host the operator allows (``make run`` and the tests
  use loopback receivers): ``TIDEMARK_WEBHOOK_ALLOWED_HTTP_HOSTS``.
- Never an address in a private, loopback, link-local (cloud metadata), CGNAT, multicast,
  reserved or unspecified range, unless the host is one the operator allows or the
  address is in ``TIDEMARK_WEBHOOK_ALLOWED_NETWORKS``.
- No credentials in the URL (they would travel in events, kept forever) and no fragment.

Refusals never repeat the URL or the host: they become events and problem details.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_URL_LENGTH = 2048
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges a webhook never reaches unless allowed; beyond Python's is_private & co, which
# already cover RFC 1918, loopback, link-local (169.254.0.0/16: the cloud metadata
# address), unique-local IPv6 and the documentation ranges.
_DENIED_EXTRA: tuple[IpNetwork, ...] = (
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64
    # 6to4 embeds an IPv4 address (2002:a9fe:a9fe:: is 169.254.169.254): a relay could
    # carry a request to it. Nobody's webhook needs 6to4 in earnest.
    ipaddress.ip_network("2002::/16"),
)


class WebhookPolicySettings(BaseSettings):
    """The operator's webhook exceptions, read without a prefix (the gateway and the
    alerts service must agree on them)."""

    model_config = SettingsConfigDict(extra="ignore")

    webhook_allowed_http_hosts: str = Field(
        default="",
        validation_alias=AliasChoices("TIDEMARK_WEBHOOK_ALLOWED_HTTP_HOSTS"),
        description="Comma-separated hosts webhooks may reach over plain http, and "
        "whatever address they resolve to (make run and the tests: 127.0.0.1,localhost).",
    )
    webhook_allowed_networks: str = Field(
        default="",
        validation_alias=AliasChoices("TIDEMARK_WEBHOOK_ALLOWED_NETWORKS"),
        description="Comma-separated CIDR ranges webhooks may reach although private.",
    )

    def policy(self) -> WebhookPolicy:
        return WebhookPolicy.parse(self.webhook_allowed_http_hosts, self.webhook_allowed_networks)


@dataclass(frozen=True)
class WebhookPolicy:
    allowed_http_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IpNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, hosts: str, networks: str) -> WebhookPolicy:
        return cls(
            frozenset(h.strip().lower().strip("[]") for h in hosts.split(",") if h.strip()),
            tuple(
                ipaddress.ip_network(n.strip(), strict=False)
                for n in networks.split(",")
                if n.strip()
            ),
        )

    def host_allowed(self, host: str) -> bool:
        return host.lower().strip("[]") in self.allowed_http_hosts

    def address_allowed(self, address: IpAddress, host: str) -> bool:
        """May a delivery to ``host`` connect to ``address`` (one it resolved to)?"""
        if self.host_allowed(host):
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed_networks):
            return True
        return not is_denied(address)

    def check_url(self, url: str) -> str | None:
        """Why ``url`` may not be a webhook's, or None when it may. Never repeats it."""
        if len(url) > MAX_URL_LENGTH:
            return f"the URL is longer than {MAX_URL_LENGTH} characters"
        if any(c.isspace() or ord(c) < 0x20 for c in url):
            return "the URL contains whitespace or control characters"
        if not url.isascii():
            # The HTTP client sends only ASCII URLs: a URL it would refuse at every
            # delivery is refused here, once. IDNA and percent-encoding say the same.
            return "the URL must be ASCII (an internationalised host in IDNA form, xn--…)"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "the URL is not a valid URL"
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if scheme not in ("https", "http"):
            return "the URL must use https"
        if not host:
            return "the URL has no host"
        if parts.username is not None or parts.password is not None:
            return "the URL must not carry credentials (sign with signingSecretRef instead)"
        if parts.fragment:
            return "the URL must not have a fragment"
        if port == 0:
            return "the URL's port is not valid"
        if scheme == "http" and not self.host_allowed(host):
            return "the URL must use https (plain http only to hosts the operator allows)"
        try:
            literal: IpAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and not self.address_allowed(literal, host):
            return "the URL points at a private, loopback, link-local or reserved address"
        local_name = host == "localhost" or host.endswith(".localhost")
        if literal is None and local_name and not self.host_allowed(host):
            return "the URL points at a private, loopback, link-local or reserved address"
        return None


def is_denied(address: IpAddress) -> bool:
    """Is ``address`` in a range webhooks never reach by default?"""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
        or any(address in net for net in _DENIED_EXTRA if net.version == address.version)
    )
