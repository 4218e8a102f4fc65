"""The one way a webhook POST leaves the service: through a connection that resolves the
receiver's host itself, refuses every address the webhook policy rejects, and connects to
the address it checked (so a name cannot resolve to a public address for the check and a
private one for the connection). TLS still verifies the certificate against the host name
of the URL. Redirects are never followed (httpcore has none), the whole exchange has one
time limit, and errors say what went wrong without the URL or anything of the secret.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import typing
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpcore
from tidemark_platform.webhook_policy import IpAddress, WebhookPolicy


class DeliveryError(Exception):
    """An attempt that got no HTTP answer; the message is safe to record (no URL)."""


class AddressRefused(DeliveryError):
    def __init__(self) -> None:
        super().__init__(
            "the receiver's host resolves only to addresses the webhook policy refuses "
            "(private, loopback, link-local or reserved); nothing was sent"
        )


class HostUnresolved(DeliveryError):
    def __init__(self) -> None:
        super().__init__("the receiver's host name does not resolve")


# Host names are resolved on threads of their own. asyncio's getaddrinfo runs on the
# loop's default executor (a handful of threads on 2 cores), which the service's event
# store work shares: a tenant whose name server never answers would otherwise hold every
# one of them (the attempt's time limit cancels the wait, not the blocked lookup) and
# stall alerts and other receivers' deliveries. Here a slow lookup holds one thread of
# this pool, as many as deliveries may be in flight.
DNS_THREADS = 32
_DNS_POOL = ThreadPoolExecutor(max_workers=DNS_THREADS, thread_name_prefix="webhook-dns")


async def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().run_in_executor(
            _DNS_POOL,
            functools.partial(
                socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            ),
        )
    except (OSError, UnicodeError):
        raise HostUnresolved() from None
    addresses: list[IpAddress] = []
    for _family, _type, _proto, _canonical, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


Resolver = Callable[[str, int], Awaitable[list[IpAddress]]]


class PolicyCheckedBackend(httpcore.AsyncNetworkBackend):
    """A network backend that connects only to addresses the policy allows."""

    def __init__(
        self,
        policy: WebhookPolicy,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.policy = policy
        self._inner = inner or httpcore.AnyIOBackend()
        self._resolve = resolver

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        resolved = await self._resolve(host, port)
        allowed = [a for a in resolved if self.policy.address_allowed(a, host)]
        if not allowed:
            raise AddressRefused()
        failure: Exception | None = None
        for address in allowed:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DeliveryError("webhooks are delivered over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@dataclass(frozen=True)
class Answer:
    status: int

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str | None:
        """Why the answer is no delivery; None for a 2xx."""
        if self.delivered:
            return None
        if 300 <= self.status < 400:
            return f"the receiver answered {self.status} (redirects are not followed)"
        return f"the receiver answered {self.status}"


class WebhookClient:
    """Posts signed bodies; one connection pool for every webhook of the instance."""

    def __init__(
        self,
        policy: WebhookPolicy,
        timeout_seconds: float,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.policy = policy
        self.timeout_seconds = timeout_seconds
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            retries=0,
            network_backend=PolicyCheckedBackend(policy, resolver=resolver),
        )

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST ``body``; the receiver's status, or ``DeliveryError`` saying why none came."""
        reason = self.policy.check_url(url)
        if reason is not None:  # the operator's rules may have changed since registration
            raise DeliveryError(f"the webhook's URL is no longer allowed: {reason}")
        limit = self.timeout_seconds
        request_headers = [
            ("Content-Type", "application/json"),
            ("User-Agent", "Tidemark-Webhooks/1"),
            *headers.items(),
        ]
        per_phase = {"connect": limit, "read": limit, "write": limit, "pool": limit}
        try:
            async with asyncio.timeout(limit):
                async with self._pool.stream(
                    "POST",
                    url,
                    headers=request_headers,
                    content=body,
                    extensions={"timeout": per_phase},
                ) as response:
                    # The body of the answer is not needed, nor read: a receiver cannot
                    # make the deliverer buffer it.
                    return Answer(response.status)
        except DeliveryError:
            raise
        except (TimeoutError, httpcore.TimeoutException):
            raise DeliveryError(f"no answer within {limit:g} s") from None
        except httpcore.ConnectError:
            raise DeliveryError(
                "could not connect to the receiver (refused, unreachable or TLS failed)"
            ) from None
        except httpcore.UnsupportedProtocol:
            raise DeliveryError("the webhook's URL is not an http(s) URL") from None
        except (httpcore.ProtocolError, httpcore.NetworkError):
            raise DeliveryError("the connection to the receiver failed mid-request") from None
        except (OSError, ssl.SSLError):
            raise DeliveryError("the connection to the receiver failed") from None

    async def aclose(self) -> None:
        await self._pool.aclose()
