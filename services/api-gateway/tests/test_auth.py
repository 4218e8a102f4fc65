"""Token verification: algorithms, keys, issuer and audience come from configuration.

Over HTTP against the gateway's own middleware, scope guard and problem mapping (no
Kafka or PostgreSQL needed), and against a real JWKS server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar import Litestar, Router, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.testing import AsyncTestClient, TestClient
from pydantic import ValidationError
from tidemark_api_gateway.auth import (
    VERIFIED_TOKEN_SECONDS,
    VERIFIED_TOKENS,
    TokenVerifier,
    auth_middleware,
    scope_guard,
)
from tidemark_api_gateway.problems import EXCEPTION_HANDLERS, PROBLEM_JSON
from tidemark_api_gateway.settings import GatewaySettings

SECRET = "unit-test-secret-of-a-sensible-length-0123456789"
BOTH = "backups:read backups:write"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def settings(**overrides: object) -> GatewaySettings:
    values: dict[str, object] = {"database_url": "postgresql://x@localhost/x", "jwt_secret": SECRET}
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


def claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "org_id": str(uuid.uuid4()), "exp": int(time.time()) + 60, **extra}


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(payload: dict[str, object], hmac_key: bytes) -> str:
    """HS256 over ``payload`` with any bytes as the secret (PyJWT refuses PEM keys)."""
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned(payload: dict[str, object]) -> str:
    return jwt.encode(payload, key=None, algorithm="none")


def gateway_app(gateway_settings: GatewaySettings) -> Litestar:
    """The gateway's auth as main.create_app wires it: middleware, guard, problem+json."""

    @get("/things", sync_to_thread=False)
    def read() -> dict[str, bool]:
        return {"read": True}

    @post("/things", sync_to_thread=False)
    def write() -> dict[str, bool]:
        return {"written": True}

    @get("/health", sync_to_thread=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    api = Router(path="/api/v1", route_handlers=[read, write], guards=[scope_guard])
    return Litestar(
        route_handlers=[api, health],
        middleware=[auth_middleware(gateway_settings)],
        exception_handlers=EXCEPTION_HANDLERS,
    )


def call(
    gateway_settings: GatewaySettings, token: str, method: str = "GET"
) -> tuple[int, dict[str, Any], str]:
    with TestClient(gateway_app(gateway_settings)) as client:
        response = client.request(
            method, "/api/v1/things", headers={"Authorization": f"Bearer {token}"}
        )
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
    return response.status_code, response.json(), response.text


def assert_refused(gateway_settings: GatewaySettings, token: str, status: int) -> None:
    """Refused with ``status``, and the answer quotes no part of the token."""
    code, body, text = call(gateway_settings, token)
    assert code == status, text
    assert body["status"] == status
    for part in token.split("."):
        if part:
            assert part not in text


# --- verification ------------------------------------------------------------------------


async def test_hs256_tokens_carry_subject_organization_and_scopes() -> None:
    token_claims = claims(scope=BOTH)
    principal = await TokenVerifier(settings()).verify(jwt.encode(token_claims, SECRET, "HS256"))
    assert principal.subject == "alice"
    assert str(principal.organization_id) == token_claims["org_id"]
    assert principal.scopes == frozenset({"backups:read", "backups:write"})


# A verified token is kept (its text as the key) so a client's next requests skip the
# signature check; these pin how long, and that the kept ones are bounded. Rotating the
# verifier's secret stands for a key the provider withdrew: a kept token does not notice.


async def test_a_kept_token_is_refused_once_it_expires() -> None:
    verifier = TokenVerifier(settings())
    token = jwt.encode(claims(exp=int(time.time()) + 2), SECRET, "HS256")
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert (await verifier.verify(token)).subject == "alice"
    assert (await verifier.verify(token)).subject == "alice"
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(NotAuthorizedException, match="token expired"):
        await verifier.verify(token)


async def test_a_kept_token_is_verified_again_after_a_while() -> None:
    now = [1_000.0]
    verifier = TokenVerifier(settings(), clock=lambda: now[0])
    token = jwt.encode(claims(), SECRET, "HS256")
    principal = await verifier.verify(token)
    verifier._secret = "another-secret-of-a-sensible-length-0123456789"
    now[0] += VERIFIED_TOKEN_SECONDS - 1
    assert await verifier.verify(token) == principal  # kept: not checked again
    now[0] += 2
    with pytest.raises(NotAuthorizedException, match="signature verification failed"):
        await verifier.verify(token)
    # A refused token is not kept: it stays refused.
    with pytest.raises(NotAuthorizedException, match="signature verification failed"):
        await verifier.verify(token)


async def test_the_kept_tokens_are_bounded_and_the_least_recently_used_go_first() -> None:
    verifier = TokenVerifier(settings())
    tokens = [jwt.encode(claims(n=n), SECRET, "HS256") for n in range(VERIFIED_TOKENS + 1)]
    for token in tokens[:-1]:
        await verifier.verify(token)
    await verifier.verify(tokens[0])  # used again: now the most recent
    await verifier.verify(tokens[-1])  # one too many: the least recent (tokens[1]) goes
    verifier._secret = "another-secret-of-a-sensible-length-0123456789"
    for kept in (tokens[0], tokens[2], tokens[-1]):
        await verifier.verify(kept)
    with pytest.raises(NotAuthorizedException, match="signature verification failed"):
        await verifier.verify(tokens[1])


async def test_a_token_without_a_scope_claim_gets_only_the_default_scopes() -> None:
    token = jwt.encode(claims(), SECRET, "HS256")
    assert (await TokenVerifier(settings()).verify(token)).scopes == frozenset()
    granted = TokenVerifier(settings(jwt_default_scopes=" backups:read  other "))
    assert (await granted.verify(token)).scopes == frozenset({"backups:read", "other"})
    # A scope claim, even an empty one, is what the token may do: no defaults added.
    empty = jwt.encode(claims(scope=""), SECRET, "HS256")
    assert (await granted.verify(empty)).scopes == frozenset()


async def test_a_scope_claim_that_is_not_a_string_grants_nothing() -> None:
    token = jwt.encode(claims(scope=["backups:read"]), SECRET, "HS256")
    assert (await TokenVerifier(settings()).verify(token)).scopes == frozenset()


async def test_the_algorithm_is_not_taken_from_the_token() -> None:
    token = jwt.encode(claims(), SECRET, "HS512")
    with pytest.raises(NotAuthorizedException, match="algorithm not accepted"):
        await TokenVerifier(settings()).verify(token)


async def test_issuer_and_audience_are_checked_when_configured() -> None:
    verifier = TokenVerifier(settings(jwt_issuer="https://idp", jwt_audience="tidemark"))
    good = jwt.encode(claims(iss="https://idp", aud="tidemark"), SECRET, "HS256")
    assert (await verifier.verify(good)).subject == "alice"
    for bad in (
        claims(iss="https://evil", aud="tidemark"),
        claims(iss="https://idp", aud="x"),
        claims(),
    ):
        with pytest.raises(NotAuthorizedException):
            await verifier.verify(jwt.encode(bad, SECRET, "HS256"))


async def test_rs256_tokens_verify_with_the_configured_public_key(tmp_path: Path) -> None:
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(RSA_KEY))
    verifier = TokenVerifier(
        settings(jwt_secret=None, jwt_public_key_file=str(public), jwt_algorithms=["RS256"])
    )
    assert (await verifier.verify(jwt.encode(claims(), RSA_KEY, "RS256"))).subject == "alice"
    with pytest.raises(NotAuthorizedException):
        await verifier.verify(jwt.encode(claims(), SECRET, "HS256"))


# --- over HTTP: what a client sees ----------------------------------------------------------


def test_a_token_without_scope_is_403_for_reads_and_writes() -> None:
    token = jwt.encode(claims(), SECRET, "HS256")
    for method, scope in (("GET", "backups:read"), ("POST", "backups:write")):
        code, body, _ = call(settings(), token, method)
        assert code == 403
        assert body["title"] == "Forbidden"
        assert scope in body["detail"]


def test_default_scopes_configured_by_the_operator_allow_a_token_without_scope() -> None:
    token = jwt.encode(claims(), SECRET, "HS256")
    reader = settings(jwt_default_scopes="backups:read")
    assert call(reader, token, "GET")[0] == 200
    assert call(reader, token, "POST")[0] == 403
    both = settings(jwt_default_scopes=BOTH)
    assert call(both, token, "GET")[0] == 200
    assert call(both, token, "POST")[0] == 201


def test_a_scoped_token_needs_read_for_reads_and_write_for_writes() -> None:
    def token(scope: str) -> str:
        return jwt.encode(claims(scope=scope), SECRET, "HS256")

    assert call(settings(), token("backups:read"), "GET")[0] == 200
    assert call(settings(), token("backups:read"), "POST")[0] == 403
    assert call(settings(), token("backups:write"), "GET")[0] == 403
    assert call(settings(), token("backups:write"), "POST")[0] == 201
    # Default scopes never widen a token that states its own.
    assert call(settings(jwt_default_scopes=BOTH), token("backups:read"), "POST")[0] == 403


def test_an_unsigned_token_is_401(tmp_path: Path) -> None:
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(RSA_KEY))
    rs256 = settings(jwt_secret=None, jwt_public_key_file=str(public), jwt_algorithms=["RS256"])
    for gateway_settings in (settings(), rs256):
        assert_refused(gateway_settings, unsigned(claims(scope=BOTH)), 401)


@pytest.mark.parametrize(
    ("key", "algorithm"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")], ids=["rsa", "ec"]
)
def test_hs256_signed_with_the_public_key_as_hmac_secret_is_401(
    tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, algorithm: str
) -> None:
    pem = public_pem(key)
    public = tmp_path / "public.pem"
    public.write_bytes(pem)
    gateway_settings = settings(
        jwt_secret=None, jwt_public_key_file=str(public), jwt_algorithms=[algorithm]
    )
    assert call(gateway_settings, jwt.encode(claims(scope=BOTH), key, algorithm))[0] == 200
    for secret in (pem, pem.strip(), public.read_text().encode()):
        assert_refused(gateway_settings, forged_hs256(claims(scope=BOTH), secret), 401)


def test_an_expired_token_is_401() -> None:
    token = jwt.encode(claims(scope=BOTH, exp=int(time.time()) - 30), SECRET, "HS256")
    assert_refused(settings(), token, 401)
    assert call(settings(), token)[1]["detail"] == "token expired"


def test_a_wrong_issuer_or_audience_is_401_when_configured() -> None:
    configured = settings(jwt_issuer="https://idp", jwt_audience="tidemark")
    good = claims(scope=BOTH, iss="https://idp", aud="tidemark")
    assert call(configured, jwt.encode(good, SECRET, "HS256"))[0] == 200
    for bad, detail in (
        ({**good, "iss": "https://evil"}, "invalid token: wrong issuer"),
        ({**good, "aud": "someone-else"}, "invalid token: wrong audience"),
        (
            {k: v for k, v in good.items() if k != "iss"},
            "invalid token: the 'iss' claim is missing",
        ),
        (
            {k: v for k, v in good.items() if k != "aud"},
            "invalid token: the 'aud' claim is missing",
        ),
    ):
        token = jwt.encode(bad, SECRET, "HS256")
        assert_refused(configured, token, 401)
        assert call(configured, token)[1]["detail"] == detail


def test_errors_never_quote_the_token() -> None:
    secret_looking = "s3cr3t-value-that-must-not-be-echoed"
    hs256_header = b64(b'{"alg":"HS256"}')
    tokens = [
        jwt.encode(claims(scope=BOTH, org_id=secret_looking), SECRET, "HS256"),
        jwt.encode(claims(scope=BOTH), "another-secret-of-a-sensible-length-0000", "HS256"),
        jwt.encode(
            claims(scope=BOTH, nbf=int(time.time()) + 600, x=secret_looking), SECRET, "HS256"
        ),
        f"{hs256_header}.{b64(secret_looking.encode())}.{b64(b'sig')}",
        f"{b64(secret_looking.encode())}.e30.sig",
        secret_looking,
    ]
    for token in tokens:
        code, _, text = call(settings(), token)
        assert code == 401, text
        assert secret_looking not in text
        for part in token.split("."):
            assert part not in text


# --- JWKS: a real identity provider on 127.0.0.1 ---------------------------------------------


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    document = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**document, "kid": kid, "alg": "RS256", "use": "sig"}


class IdentityProvider:
    """A JWKS endpoint that a test can rotate, slow down, break and stop."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.delay = 0.0
        self.status = 200
        self.requests = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                time.sleep(provider.delay)
                body = json.dumps({"keys": provider.keys}).encode()
                self.send_response(provider.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The gateway may have given up waiting, as the slow-provider test wants.
                with suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self.running = False


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.stop()


def jwks_settings(idp: IdentityProvider, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "jwt_secret": None,
        "jwt_jwks_url": idp.url,
        "jwt_algorithms": ["RS256"],
        "jwt_jwks_timeout_seconds": 1.0,
        "jwt_jwks_cache_seconds": 300.0,
        "jwt_jwks_min_refresh_interval_seconds": 0.0,
    }
    values.update(overrides)
    return settings(**values)


def signed(kid: str, key: rsa.RSAPrivateKey = RSA_KEY, **extra: object) -> str:
    return jwt.encode(claims(scope=BOTH, **extra), key, "RS256", headers={"kid": kid})


async def test_jwks_keys_are_fetched_once_and_served_from_the_cache(
    idp: IdentityProvider,
) -> None:
    idp.keys = [jwk(RSA_KEY, "k1")]
    verifier = TokenVerifier(jwks_settings(idp))
    for _ in range(3):
        assert (await verifier.verify(signed("k1"))).subject == "alice"
    assert idp.requests == 1


async def test_cached_keys_still_verify_while_the_identity_provider_is_down(
    idp: IdentityProvider,
) -> None:
    idp.keys = [jwk(RSA_KEY, "k1")]
    # Keys expire at once, so every request tries to refresh them and fails.
    gateway_settings = jwks_settings(idp, jwt_jwks_cache_seconds=0.01)
    async with AsyncTestClient(gateway_app(gateway_settings)) as client:
        headers = {"Authorization": f"Bearer {signed('k1')}"}
        assert (await client.get("/api/v1/things", headers=headers)).status_code == 200
        idp.stop()
        await asyncio.sleep(0.05)
        for _ in range(2):
            response = await client.get("/api/v1/things", headers=headers)
            assert response.status_code == 200, response.text


async def test_a_failed_refresh_keeps_the_old_keys(idp: IdentityProvider) -> None:
    idp.keys = [jwk(RSA_KEY, "k1")]
    verifier = TokenVerifier(jwks_settings(idp, jwt_jwks_cache_seconds=0.01))
    assert (await verifier.verify(signed("k1"))).subject == "alice"
    await asyncio.sleep(0.05)
    for status, keys in ((503, [jwk(RSA_KEY, "k1")]), (200, []), (200, [{"kty": "oct"}])):
        idp.status, idp.keys = status, keys
        before = idp.requests
        assert (await verifier.verify(signed("k1"))).subject == "alice"
        assert idp.requests == before + 1  # it did try, and kept k1 when that failed


async def test_an_unknown_kid_refreshes_the_keys_so_a_rotated_key_verifies(
    idp: IdentityProvider,
) -> None:
    idp.keys = [jwk(RSA_KEY, "k1")]
    verifier = TokenVerifier(jwks_settings(idp))
    assert (await verifier.verify(signed("k1"))).subject == "alice"
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys = [jwk(RSA_KEY, "k1"), jwk(rotated, "k2")]
    assert (await verifier.verify(signed("k2", rotated))).subject == "alice"
    assert idp.requests == 2


async def test_unknown_kids_refresh_at_most_once_per_interval(idp: IdentityProvider) -> None:
    idp.keys = [jwk(RSA_KEY, "k1")]
    verifier = TokenVerifier(jwks_settings(idp, jwt_jwks_min_refresh_interval_seconds=60))
    assert (await verifier.verify(signed("k1"))).subject == "alice"
    flood = [verifier.verify(signed(f"random-{n}")) for n in range(20)]
    results = await asyncio.gather(*flood, return_exceptions=True)
    assert all(isinstance(r, NotAuthorizedException) for r in results)
    assert idp.requests == 1


async def test_a_token_with_an_unknown_kid_while_the_provider_is_down_is_401(
    idp: IdentityProvider,
) -> None:
    idp.keys = [jwk(RSA_KEY, "k1")]
    async with AsyncTestClient(gateway_app(jwks_settings(idp))) as client:
        known = {"Authorization": f"Bearer {signed('k1')}"}
        assert (await client.get("/api/v1/things", headers=known)).status_code == 200
        idp.stop()
        unknown = signed("k-unknown")
        response = await client.get(
            "/api/v1/things", headers={"Authorization": f"Bearer {unknown}"}
        )
        assert response.status_code == 401, response.text
        assert response.json()["detail"] == "invalid token: unknown signing key"
        assert "k-unknown" not in response.text
        # The key already held still verifies meanwhile.
        assert (await client.get("/api/v1/things", headers=known)).status_code == 200


async def test_a_gateway_whose_provider_was_never_reachable_answers_401(
    idp: IdentityProvider,
) -> None:
    idp.keys = [jwk(RSA_KEY, "k1")]
    idp.stop()
    async with AsyncTestClient(gateway_app(jwks_settings(idp))) as client:
        response = await client.get(
            "/api/v1/things", headers={"Authorization": f"Bearer {signed('k1')}"}
        )
    assert response.status_code == 401, response.text


@contextmanager
def served(app: Litestar) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1, on its own event loop in a thread, as deployed.

    (litestar's AsyncTestClient answers one request at a time, so it cannot show that one
    request waiting on the identity provider leaves the others free.)
    """
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


async def test_a_slow_provider_does_not_block_the_event_loop(idp: IdentityProvider) -> None:
    idp.keys = [jwk(RSA_KEY, "k1")]
    idp.delay = 3.0
    gateway_settings = jwks_settings(idp, jwt_jwks_timeout_seconds=1.0)
    with served(gateway_app(gateway_settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            start = time.monotonic()

            async def authenticated() -> tuple[httpx.Response, float]:
                response = await client.get(
                    "/api/v1/things", headers={"Authorization": f"Bearer {signed('k1')}"}
                )
                return response, time.monotonic() - start

            async def health_while_waiting() -> tuple[httpx.Response, float]:
                await asyncio.sleep(0.3)  # the key fetch has begun
                response = await client.get("/health")
                return response, time.monotonic() - start

            (auth, auth_done), (health, health_done) = await asyncio.gather(
                authenticated(), health_while_waiting()
            )
    assert idp.requests == 1  # the fetch was under way while /health answered
    assert health.status_code == 200
    assert health_done < 0.8, health_done
    # The fetch gave up at its timeout: no keys, so 401, well before the server answered.
    assert auth.status_code == 401, auth.text
    assert 0.9 < auth_done < 2.5, auth_done


async def test_a_symmetric_key_in_the_jwks_is_never_used(idp: IdentityProvider) -> None:
    hmac_secret = b"a-symmetric-key-published-in-the-jwks-000"
    idp.keys = [
        {"kty": "oct", "kid": "sym", "alg": "HS256", "k": b64(hmac_secret)},
        jwk(RSA_KEY, "k1"),
    ]
    verifier = TokenVerifier(jwks_settings(idp))
    forged = jwt.encode(claims(scope=BOTH), hmac_secret, "HS256", headers={"kid": "sym"})
    with pytest.raises(NotAuthorizedException, match="unknown signing key"):
        await verifier.verify(forged)
    assert (await verifier.verify(signed("k1"))).subject == "alice"


# --- refused at start ---------------------------------------------------------------------


def test_a_gateway_without_a_key_or_with_a_secret_for_rs256_does_not_start() -> None:
    with pytest.raises(ValidationError, match="TIDEMARK_API_GATEWAY_JWT_SECRET"):
        settings(jwt_secret=None)
    with pytest.raises(ValidationError, match="HMAC") as refused:
        settings(jwt_algorithms=["RS256"])
    assert "TIDEMARK_API_GATEWAY_JWT_SECRET" in str(refused.value)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("algorithms", [["HS256"], ["RS256", "HS256"], ["HS512"]])
def test_a_public_key_or_jwks_with_a_symmetric_algorithm_does_not_start(
    tmp_path: Path, algorithms: list[str]
) -> None:
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(RSA_KEY))
    for name, source in (
        ("JWT_PUBLIC_KEY_FILE", {"jwt_public_key_file": str(public)}),
        ("JWT_JWKS_URL", {"jwt_jwks_url": "http://127.0.0.1:1/jwks.json"}),
    ):
        with pytest.raises(ValidationError) as refused:
            settings(jwt_secret=None, jwt_algorithms=algorithms, **source)
        assert f"TIDEMARK_API_GATEWAY_{name}" in str(refused.value)
        assert "TIDEMARK_API_GATEWAY_JWT_ALGORITHMS" in str(refused.value)


@pytest.mark.parametrize("none", ["none", "None", "NONE"])
def test_none_among_the_algorithms_does_not_start(tmp_path: Path, none: str) -> None:
    public = tmp_path / "public.pem"
    public.write_bytes(public_pem(RSA_KEY))
    with pytest.raises(ValidationError, match=r"TIDEMARK_API_GATEWAY_JWT_ALGORITHMS.*'none'"):
        settings(jwt_secret=None, jwt_public_key_file=str(public), jwt_algorithms=["RS256", none])
    with pytest.raises(ValidationError, match=r"TIDEMARK_API_GATEWAY_JWT_ALGORITHMS.*'none'"):
        settings(jwt_algorithms=["HS256", none])


def test_an_empty_or_unknown_algorithm_list_does_not_start() -> None:
    with pytest.raises(ValidationError, match="TIDEMARK_API_GATEWAY_JWT_ALGORITHMS is empty"):
        settings(jwt_algorithms=[])
    with pytest.raises(ValidationError, match=r"TIDEMARK_API_GATEWAY_JWT_ALGORITHMS.*HS257"):
        settings(jwt_algorithms=["HS257"])


def test_the_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@localhost/x")
    monkeypatch.setenv("TIDEMARK_API_GATEWAY_JWT_JWKS_URL", "https://idp/jwks.json")
    monkeypatch.setenv("TIDEMARK_API_GATEWAY_JWT_ALGORITHMS", '["RS256", "ES256"]')
    monkeypatch.setenv("TIDEMARK_API_GATEWAY_JWT_DEFAULT_SCOPES", "backups:read backups:write")
    monkeypatch.setenv("TIDEMARK_API_GATEWAY_JWT_JWKS_TIMEOUT_SECONDS", "0.5")
    loaded = GatewaySettings()  # type: ignore[call-arg]
    assert loaded.default_scopes == frozenset({"backups:read", "backups:write"})
    assert loaded.jwt_jwks_timeout_seconds == 0.5
    monkeypatch.delenv("TIDEMARK_API_GATEWAY_JWT_JWKS_TIMEOUT_SECONDS")
    assert GatewaySettings().jwt_jwks_timeout_seconds == 2.0  # type: ignore[call-arg]
    assert GatewaySettings(jwt_default_scopes="").default_scopes == frozenset()  # type: ignore[call-arg]
