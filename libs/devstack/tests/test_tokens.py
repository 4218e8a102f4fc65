"""The tokens the tests and `tidemark-dev run` mint carry the scopes the gateway requires."""

from __future__ import annotations

import uuid

import jwt
from tidemark_devstack import run
from tidemark_devstack.e2e import JWT_SECRET, make_token


def decode(token: str, secret: str = JWT_SECRET) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, secret, algorithms=["HS256"])
    return claims


def test_test_tokens_may_read_and_write_unless_told_otherwise() -> None:
    org = uuid.uuid4()
    assert decode(make_token(org))["scope"] == "backups:read backups:write"
    assert decode(make_token(org, scope="backups:read"))["scope"] == "backups:read"


def test_a_test_token_without_a_scope_claim_is_minted_explicitly() -> None:
    claims = decode(make_token(uuid.uuid4(), scope=None))
    assert "scope" not in claims
    assert set(claims) == {"sub", "org_id", "exp"}


def test_the_development_token_may_read_and_write() -> None:
    secret = "a-development-secret-of-a-sensible-length-000000"
    token, _ = run.make_token(secret)
    scopes = str(decode(token, secret)["scope"]).split()
    assert {"backups:read", "backups:write"} <= set(scopes)
