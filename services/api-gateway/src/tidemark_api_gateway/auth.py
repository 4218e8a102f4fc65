"""JWT authentication (a middleware) and scope authorization (a guard)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from tidemark_platform.logging import get_logger

from tidemark_api_gateway.settings import GatewaySettings

log = get_logger(__name__)

READ_SCOPE = "backups:read"
WRITE_SCOPE = "backups:write"
UNAUTHENTICATED_PATHS = {"/health", "/ready", "/metrics", "/schema"}

# Verified tokens kept (by their exact text) so that a client's every request does not
# decode and check the signature again (measured: most of the auth middleware's CPU, a
# tenth of a list page's). An entry lasts until the token's ``exp`` and at most
# VERIFIED_TOKEN_SECONDS, so a key the provider withdraws stops being honoured soon.
VERIFIED_TOKENS = 1024
VERIFIED_TOKEN_SECONDS = 60.0

# What a client is told about a rejected token: fixed words chosen by the failure's type,
# never PyJWT's message, which may quote parts of the token (errors are kept forever).
_REJECTIONS: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "invalid token: not yet valid"),
    (jwt.InvalidAudienceError, "invalid token: wrong audience"),
    (jwt.InvalidIssuerError, "invalid token: wrong issuer"),
    (jwt.InvalidAlgorithmError, "invalid token: algorithm not accepted"),
    (jwt.InvalidSignatureError, "invalid token: signature verification failed"),
    (jwt.DecodeError, "invalid token: malformed"),
]


def _rejection(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"invalid token: the {exc.claim!r} claim is missing"  # a name we require
    for kind, message in _REJECTIONS:
        if isinstance(exc, kind):
            return message
    return "invalid token"


@dataclass(frozen=True)
class Principal:
    subject: str
    organization_id: uuid.UUID
    scopes: frozenset[str]


class JWKSCache:
    """The identity provider's signing keys, fetched without blocking the event loop.

    Keys are refetched when older than ``max_age`` or when a token names a kid the cache
    does not know, at most once per ``min_refresh_interval`` (concurrent callers share one
    fetch). A fetch that fails or times out keeps the keys already held, so tokens signed
    with them still verify while the provider is down.
    """

    def __init__(
        self,
        url: str,
        algorithms: Collection[str],
        *,
        timeout: float,
        max_age: float,
        min_refresh_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._algorithms = frozenset(algorithms)
        self._timeout = timeout
        self._max_age = max_age
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        # Loading the CA bundle takes most of a second of CPU: done once, here at start,
        # since an httpx client built without it would load it on the event loop per fetch.
        self._tls = httpx.create_ssl_context()

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is not None and not self._expired():
            return key
        if key is not None and self._lock.locked():
            return key  # someone is refreshing already: the held key is good meanwhile
        await self.refresh()
        return self._keys.get(kid)

    def _expired(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age

    async def refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if (
                self._attempted_at is not None
                and now - self._attempted_at < self._min_refresh_interval
            ):
                return
            self._attempted_at = now
            try:
                keys = await self._fetch()
            # Whatever went wrong (network, HTTP status, JSON, a JWK that PyJWT cannot
            # parse: some raise KeyError), the keys held stay and the caller gets a 401.
            except Exception as exc:
                log.warning(
                    "jwks_refresh_failed",
                    url=self.url,
                    error=type(exc).__name__,
                    keys_kept=len(self._keys),
                )
                return
            self._keys = keys
            self._fetched_at = self._clock()

    async def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        # httpx's timeout bounds each phase; the outer one bounds a server that trickles.
        async with asyncio.timeout(self._timeout):
            async with httpx.AsyncClient(timeout=self._timeout, verify=self._tls) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
                response.raise_for_status()
                document = response.json()
        if not isinstance(document, dict):
            raise ValueError("the JWKS document is not a JSON object")
        keys = {
            key.key_id: key
            for key in jwt.PyJWKSet.from_dict(document).keys
            if key.algorithm_name in self._algorithms and key.public_key_use in (None, "sig")
        }
        if not keys:
            raise ValueError("the JWKS has no signing key for the configured algorithms")
        return keys


class TokenVerifier:
    """Verifies tokens with keys and algorithms from configuration, never from the token."""

    def __init__(
        self, settings: GatewaySettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.algorithms = settings.jwt_algorithms
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.default_scopes = settings.default_scopes
        self._secret = settings.jwt_secret
        self._public_key = (
            Path(settings.jwt_public_key_file).read_text() if settings.jwt_public_key_file else None
        )
        self.jwks = (
            JWKSCache(
                settings.jwt_jwks_url,
                settings.jwt_algorithms,
                timeout=settings.jwt_jwks_timeout_seconds,
                max_age=settings.jwt_jwks_cache_seconds,
                min_refresh_interval=settings.jwt_jwks_min_refresh_interval_seconds,
            )
            if settings.jwt_jwks_url
            else None
        )
        self._clock = clock
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def _key(self, token: str) -> Any:
        if self.jwks is None:
            return self._public_key or self._secret
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise NotAuthorizedException("invalid token: malformed") from None
        if kid is not None and not isinstance(kid, str):
            raise NotAuthorizedException("invalid token: malformed")
        key = await self.jwks.key(kid)
        if key is None:
            raise NotAuthorizedException("invalid token: unknown signing key")
        return key

    async def verify(self, token: str) -> Principal:
        """The token's principal; a token verified before is answered from memory until
        its expiry (or VERIFIED_TOKEN_SECONDS after it was verified, if sooner)."""
        now = self._clock()
        kept = self._verified.get(token)
        if kept is not None:
            principal, until = kept
            if now < until:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        principal, expires = await self._verify(token)
        self._verified[token] = (principal, min(expires, now + VERIFIED_TOKEN_SECONDS))
        if len(self._verified) > VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        key = await self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                options={
                    "require": ["exp", "sub", "org_id"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise NotAuthorizedException(_rejection(exc)) from None
        try:
            organization_id = uuid.UUID(str(claims["org_id"]))
        except ValueError:
            raise NotAuthorizedException("invalid token: org_id is not a UUID") from None
        principal = Principal(str(claims["sub"]), organization_id, self._scopes(claims))
        return principal, float(claims["exp"])

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        # No claim: only what the operator grants by default (nothing unless configured).
        if "scope" not in claims:
            return self.default_scopes
        scope = claims["scope"]
        return frozenset(scope.split()) if isinstance(scope, str) else frozenset()


class JWTAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    def __init__(self, app: Any, verifier: TokenVerifier, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.verifier = verifier

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            raise NotAuthorizedException("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthorizedException("the Authorization header must be 'Bearer <JWT>'")
        principal = await self.verifier.verify(token.strip())
        return AuthenticationResult(user=principal, auth=token)


def auth_middleware(settings: GatewaySettings) -> DefineMiddleware:
    return DefineMiddleware(
        JWTAuthenticationMiddleware,
        verifier=TokenVerifier(settings),
        exclude=[rf"^{p}" for p in sorted(UNAUTHENTICATED_PATHS)],
    )


def scope_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Reads need ``backups:read`` and writes ``backups:write``; no scope, no access."""
    if connection.scope.get("method") == "OPTIONS":
        return  # answered by Litestar with the allowed methods; no token, no data
    principal: Principal = connection.user
    needed = READ_SCOPE if connection.scope.get("method") in ("GET", "HEAD") else WRITE_SCOPE
    if needed not in principal.scopes:
        raise PermissionDeniedException(f"the token lacks the {needed!r} scope")
