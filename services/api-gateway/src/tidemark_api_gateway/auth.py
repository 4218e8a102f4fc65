"""JWT authentication (a middleware) and scope authorization (a guard)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware

from tidemark_api_gateway.settings import GatewaySettings

READ_SCOPE = "backups:read"
WRITE_SCOPE = "backups:write"
UNAUTHENTICATED_PATHS = {"/health", "/ready", "/metrics", "/schema"}


@dataclass(frozen=True)
class Principal:
    subject: str
    organization_id: uuid.UUID
    scopes: frozenset[str] | None  # None: the token carries no scope claim


class TokenVerifier:
    """Verifies tokens with keys and algorithms from configuration, never from the token."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.algorithms = settings.jwt_algorithms
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self._secret = settings.jwt_secret
        self._public_key = (
            Path(settings.jwt_public_key_file).read_text() if settings.jwt_public_key_file else None
        )
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url) if settings.jwt_jwks_url else None

    def _key(self, token: str) -> Any:
        if self._jwks is not None:
            return self._jwks.get_signing_key_from_jwt(token).key
        return self._public_key or self._secret

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                options={
                    "require": ["exp", "sub", "org_id"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthorizedException("token expired") from None
        except jwt.PyJWTError as exc:
            raise NotAuthorizedException(f"invalid token: {exc}") from None
        try:
            organization_id = uuid.UUID(str(claims["org_id"]))
        except ValueError:
            raise NotAuthorizedException("invalid token: org_id is not a UUID") from None
        scope = claims.get("scope")
        scopes = frozenset(str(scope).split()) if scope is not None else None
        return Principal(str(claims["sub"]), organization_id, scopes)


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
        principal = self.verifier.verify(token.strip())
        return AuthenticationResult(user=principal, auth=token)


def auth_middleware(settings: GatewaySettings) -> DefineMiddleware:
    return DefineMiddleware(
        JWTAuthenticationMiddleware,
        verifier=TokenVerifier(settings),
        exclude=[rf"^{p}" for p in sorted(UNAUTHENTICATED_PATHS)],
    )


def scope_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Reads need ``backups:read`` and writes ``backups:write`` when the token has scopes."""
    if connection.scope.get("method") == "OPTIONS":
        return  # answered by Litestar with the allowed methods; no token, no data
    principal: Principal = connection.user
    if principal.scopes is None:
        return
    needed = READ_SCOPE if connection.scope.get("method") in ("GET", "HEAD") else WRITE_SCOPE
    if needed not in principal.scopes:
        raise PermissionDeniedException(f"the token lacks the {needed!r} scope")
