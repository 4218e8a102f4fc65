"""Token verification: algorithms, keys, issuer and audience come from configuration."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.exceptions import NotAuthorizedException
from pydantic import ValidationError
from tidemark_api_gateway.auth import TokenVerifier
from tidemark_api_gateway.settings import GatewaySettings

SECRET = "unit-test-secret-of-a-sensible-length-0123456789"


def settings(**overrides: object) -> GatewaySettings:
    values: dict[str, object] = {"database_url": "postgresql://x@localhost/x", "jwt_secret": SECRET}
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "org_id": str(uuid.uuid4()), "exp": int(time.time()) + 60, **extra}


def test_hs256_tokens_carry_subject_organization_and_scopes() -> None:
    token_claims = claims(scope="backups:read backups:write")
    principal = TokenVerifier(settings()).verify(jwt.encode(token_claims, SECRET, "HS256"))
    assert principal.subject == "alice"
    assert str(principal.organization_id) == token_claims["org_id"]
    assert principal.scopes == frozenset({"backups:read", "backups:write"})
    unscoped = TokenVerifier(settings()).verify(jwt.encode(claims(), SECRET, "HS256"))
    assert unscoped.scopes is None


def test_the_algorithm_is_not_taken_from_the_token() -> None:
    token = jwt.encode(claims(), SECRET, "HS512")
    with pytest.raises(NotAuthorizedException):
        TokenVerifier(settings()).verify(token)


def test_issuer_and_audience_are_checked_when_configured() -> None:
    verifier = TokenVerifier(settings(jwt_issuer="https://idp", jwt_audience="tidemark"))
    good = jwt.encode(claims(iss="https://idp", aud="tidemark"), SECRET, "HS256")
    assert verifier.verify(good).subject == "alice"
    for bad in (
        claims(iss="https://evil", aud="tidemark"),
        claims(iss="https://idp", aud="x"),
        claims(),
    ):
        with pytest.raises(NotAuthorizedException):
            verifier.verify(jwt.encode(bad, SECRET, "HS256"))


def test_rs256_tokens_verify_with_the_configured_public_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verifier = TokenVerifier(
        settings(jwt_secret=None, jwt_public_key_file=str(public), jwt_algorithms=["RS256"])
    )
    assert verifier.verify(jwt.encode(claims(), key, "RS256")).subject == "alice"
    with pytest.raises(NotAuthorizedException):
        verifier.verify(jwt.encode(claims(), SECRET, "HS256"))


def test_a_gateway_without_a_key_or_with_a_secret_for_rs256_does_not_start() -> None:
    with pytest.raises(ValidationError, match="TIDEMARK_API_GATEWAY_JWT_SECRET"):
        settings(jwt_secret=None)
    with pytest.raises(ValidationError, match="HMAC"):
        settings(jwt_algorithms=["RS256"])
