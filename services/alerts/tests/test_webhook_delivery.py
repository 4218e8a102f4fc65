"""Webhook delivery against real receivers on loopback (stdlib HTTP servers in threads),
and, for the deliverer, real PostgreSQL and Kafka: the alerts service's webhook part runs
as ``install_webhooks`` wires it into a ServiceRuntime; alert changes and webhook
registrations arrive on their topics as the alerts core and the gateway publish them."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from psycopg.rows import dict_row
from tidemark_alerts.webhooks import SCHEMA, install_webhooks
from tidemark_alerts.webhooks.settings import WebhookSettings
from tidemark_alerts.webhooks.transport import (
    AddressRefused,
    DeliveryError,
    HostUnresolved,
    WebhookClient,
    resolve,
)
from tidemark_contracts import Envelope, Message, event_message_id
from tidemark_contracts.alert import AlertRaised, AlertResolved, WebhookDeliveryAttempted
from tidemark_contracts.catalog import WebhookRegistered, WebhookRemoved
from tidemark_contracts.services import ALERTS
from tidemark_contracts.topics import ALERT_EVENTS, CATALOG_EVENTS
from tidemark_contracts.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookPayload,
    verify_signature,
)
from tidemark_platform.kafka import make_broker
from tidemark_platform.runtime import ServiceRuntime
from tidemark_platform.settings import ServiceSettings, settings_config
from tidemark_platform.vault import KeyRing, SecretVault
from tidemark_platform.webhook_policy import WebhookPolicy

# ---------------------------------------------------------------- loopback receivers


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 answering POSTs from a script: status codes in turn
    (then ``default``), or ``"hang"``: never answer, until the test ends."""

    script: list[int | str] = field(default_factory=list)
    default: int | str = 204
    requests: list[Received] = field(default_factory=list)
    connections: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(Received(dict(self.headers), body, time.monotonic()))
                answer = receiver.script.pop(0) if receiver.script else receiver.default
                if answer == "hang":
                    receiver.release.wait(600)
                    return
                assert isinstance(answer, int)
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                receiver.connections += 1
                super().process_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*script: int | str, default: int | str = 204) -> Receiver:
        receiver = Receiver(list(script), default).start()
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.stop()


async def eventually(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- the transport alone


def fixed(*addresses: str) -> Callable[[str, int], Any]:
    async def resolver(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address(a) for a in addresses]

    return resolver


async def test_a_policy_denied_address_is_refused_without_connecting(
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    # https passes the URL check (a name, not a literal); the name resolves to loopback.
    client = WebhookClient(WebhookPolicy(), 5.0, 4, resolver=fixed("127.0.0.1", "::1"))
    url = f"https://hooks.example.com:{receiver.port}/hook"
    with pytest.raises(AddressRefused) as refused:
        await client.post(url, b"{}", {})
    await client.aclose()
    assert receiver.connections == 0
    assert "example.com" not in str(refused.value)
    assert str(receiver.port) not in str(refused.value)


async def test_only_the_checked_address_is_connected_and_tls_is_still_required(
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    policy = WebhookPolicy.parse("", "127.0.0.0/8")
    # The name resolves to the metadata address first: it is skipped, never connected.
    client = WebhookClient(policy, 5.0, 4, resolver=fixed("169.254.169.254", "127.0.0.1"))
    with pytest.raises(DeliveryError, match="TLS failed") as failed:
        await client.post(f"https://hooks.example.com:{receiver.port}/hook", b"{}", {})
    await client.aclose()
    # One connection, to the allowed address, and a TLS handshake the plain server fails.
    assert receiver.connections == 1
    assert receiver.requests == []
    assert "example.com" not in str(failed.value)


async def test_a_literal_loopback_url_without_the_operators_allowance_is_refused(
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers()
    client = WebhookClient(WebhookPolicy.parse("localhost", ""), 5.0, 4)
    with pytest.raises(DeliveryError, match="no longer allowed") as refused:
        await client.post(receiver.url("127.0.0.1"), b"{}", {})
    await client.aclose()
    assert receiver.connections == 0
    assert "127.0.0.1" not in str(refused.value)


async def test_redirects_are_answers_not_followed(receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(302)
    client = WebhookClient(WebhookPolicy.parse("127.0.0.1", ""), 5.0, 4)
    answer = await client.post(receiver.url(), b"{}", {})
    await client.aclose()
    assert answer.status == 302
    assert not answer.delivered
    assert "redirects are not followed" in (answer.describe() or "")
    assert len(receiver.requests) == 1


async def test_a_receiver_that_never_answers_is_given_up_after_the_timeout(
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers("hang")
    client = WebhookClient(WebhookPolicy.parse("127.0.0.1", ""), 0.5, 4)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"no answer within 0\.5 s"):
        await client.post(receiver.url(), b"{}", {})
    await client.aclose()
    assert time.monotonic() - started < 3


async def test_an_unresolvable_host_says_so() -> None:
    with pytest.raises(HostUnresolved):
        await resolve("no-such-host.invalid", 443)


async def test_a_refused_connection_says_so_without_the_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    client = WebhookClient(WebhookPolicy.parse("127.0.0.1", ""), 5.0, 4)
    with pytest.raises(DeliveryError, match="could not connect") as failed:
        await client.post(f"http://127.0.0.1:{port}/hook", b"{}", {})
    await client.aclose()
    assert str(port) not in str(failed.value)
    assert "127.0.0.1" not in str(failed.value)


# ---------------------------------------------------------------- the deliverer, end to end

KEYS = KeyRing.generate("k1")


class HookSettings(ServiceSettings, WebhookSettings):
    model_config = settings_config(ALERTS)


@dataclass
class Stack:
    database_url: str
    kafka: str
    runtime: ServiceRuntime | None = None
    producer: AIOKafkaProducer | None = None
    versions: dict[uuid.UUID, int] = field(default_factory=dict)

    async def start(self, **overrides: Any) -> ServiceRuntime:
        values: dict[str, Any] = {
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "TIDEMARK_SECRETS_KEYS": KEYS,
            "TIDEMARK_WEBHOOK_ALLOWED_HTTP_HOSTS": "localhost",
            "heartbeat_interval_seconds": 30,
            "webhook_timeout_seconds": 5,
            "webhook_retry_base_seconds": 0.2,
            "webhook_retry_max_delay_seconds": 0.5,
            "webhook_poll_seconds": 0.2,
        }
        values.update(overrides)
        settings = HookSettings(**values)
        broker = make_broker(self.kafka, ALERTS.name)
        runtime = ServiceRuntime(ALERTS.name, settings, broker)
        install_webhooks(runtime, settings, broker)
        await runtime.startup()
        self.runtime = runtime
        await asyncio.wait_for(runtime.kafka_connected.wait(), 60)
        return runtime

    async def stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.shutdown()
            self.runtime = None

    async def publish(
        self,
        message: Message,
        aggregate_id: uuid.UUID,
        env: uuid.UUID | None,
        organization_id: uuid.UUID,
    ) -> Envelope:
        version = self.versions.get(aggregate_id, 0) + 1
        self.versions[aggregate_id] = version
        envelope = Envelope.wrap(
            message,
            producer="test",
            organization_id=organization_id,
            environment_id=env,
            message_id=event_message_id(aggregate_id, version),
            aggregate_id=aggregate_id,
            aggregate_version=version,
        )
        catalog = isinstance(message, WebhookRegistered | WebhookRemoved)
        topic = CATALOG_EVENTS if catalog else ALERT_EVENTS
        if self.producer is None:
            self.producer = AIOKafkaProducer(
                bootstrap_servers=self.kafka, acks="all", enable_idempotence=True
            )
            await self.producer.start()
        await self.producer.send_and_wait(
            topic.name,
            envelope.to_bytes(),
            key=envelope.key,
            headers=[("message-type", envelope.message_type.encode())],
        )
        return envelope

    def rows(self, query: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row) as conn:
            return list(conn.execute(query, params).fetchall())

    async def register(
        self,
        organization_id: uuid.UUID,
        url: str,
        *,
        secret_ref: str = "secret:hook",  # noqa: S107 (a reference, not a secret)
        kinds: list[str] | None = None,
    ) -> uuid.UUID:
        webhook_id = uuid.uuid4()
        await self.publish(
            WebhookRegistered(
                webhook_id=webhook_id,
                organization_id=organization_id,
                url=url,
                signing_secret_ref=secret_ref,
                kinds=kinds or [],
                registered_at=datetime.now(UTC),
            ),
            webhook_id,
            None,
            organization_id,
        )
        await eventually(
            lambda: bool(self.rows(f"SELECT 1 FROM {SCHEMA}.webhooks WHERE id = %s", webhook_id)),
            "the webhook registration",
            # A new consumer group reads catalog.events from its start: on a Kafka that
            # earlier tests filled, the first registration can take a while to come round.
            within=180.0,
        )
        return webhook_id

    async def raise_alert(
        self, organization_id: uuid.UUID, kind: str = "backup_failed"
    ) -> tuple[uuid.UUID, Envelope]:
        alert_id, env = uuid.uuid4(), uuid.uuid4()
        envelope = await self.publish(
            AlertRaised(
                alert_id=alert_id,
                organization_id=organization_id,
                project_id=uuid.uuid4(),
                environment_id=env,
                backup_id=uuid.uuid4(),
                kind=kind,  # type: ignore[arg-type]
                severity="critical",
                subject=f"environment:{env}:backup",
                title="Backups of shop/prod are failing",
                message="pg_dump could not connect: check the password",
                raised_at=datetime.now(UTC),
            ),
            alert_id,
            env,
            organization_id,
        )
        return alert_id, envelope

    async def attempts(
        self, delivery_id: uuid.UUID, until: Callable[[list[Any]], bool], within: float = 60.0
    ) -> list[WebhookDeliveryAttempted]:
        """The delivery's attempts as relayed to alert.events (read from Kafka)."""
        consumer = AIOKafkaConsumer(
            ALERT_EVENTS.name, bootstrap_servers=self.kafka, auto_offset_reset="earliest"
        )
        await consumer.start()
        found: list[WebhookDeliveryAttempted] = []
        try:
            deadline = time.monotonic() + within
            while not until(found):
                assert time.monotonic() < deadline, f"attempts seen: {found}"
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        envelope = Envelope.from_bytes(record.value)
                        if envelope.message_type != WebhookDeliveryAttempted.message_type:
                            continue
                        message = WebhookDeliveryAttempted.model_validate(envelope.payload)
                        if message.delivery_id == delivery_id and message.attempt not in {
                            f.attempt for f in found
                        }:
                            found.append(message)
            return sorted(found, key=lambda m: m.attempt)
        finally:
            await consumer.stop()

    def deliveries(self, webhook_id: uuid.UUID) -> list[dict[str, Any]]:
        return self.rows(
            f"SELECT * FROM {SCHEMA}.deliveries WHERE webhook_id = %s ORDER BY created_at",
            webhook_id,
        )


@pytest.fixture
async def stack(create_database: Callable[..., str], kafka_bootstrap: str) -> AsyncIterator[Stack]:
    url = create_database("hooks")
    vault = SecretVault(url, KeyRing.parse(KEYS))
    vault.open()
    stack = Stack(url, kafka_bootstrap)
    stack.vault = vault  # type: ignore[attr-defined]
    yield stack
    await stack.stop()
    if stack.producer is not None:
        await stack.producer.stop()
    vault.close()


def store_secret(stack: Stack, organization_id: uuid.UUID, value: str) -> None:
    stack.vault.create(organization_id, "hook", value)  # type: ignore[attr-defined]


@pytest.mark.integration
async def test_an_alert_change_is_posted_signed_to_each_matching_webhook(
    stack: Stack, receivers: Callable[..., Receiver]
) -> None:
    org, other_org = uuid.uuid4(), uuid.uuid4()
    store_secret(stack, org, "whsec-of-org")
    store_secret(stack, other_org, "whsec-of-other")
    await stack.start()
    receiver, unwanted, foreign = receivers(), receivers(), receivers()
    webhook = await stack.register(org, receiver.url("localhost"), kinds=["backup_failed"])
    not_this_kind = await stack.register(org, unwanted.url("localhost"), kinds=["restore_failed"])
    other = await stack.register(other_org, foreign.url("localhost"))

    alert_id, raised = await stack.raise_alert(org)
    await eventually(lambda: len(receiver.requests) == 1, "the POST")

    request = receiver.requests[0]
    headers = {k.lower(): v for k, v in request.headers.items()}
    timestamp = verify_signature("whsec-of-org", headers[SIGNATURE_HEADER.lower()], request.body)
    assert abs(timestamp - time.time()) < 60
    payload = WebhookPayload.model_validate_json(request.body)
    assert payload.type == "alert.raised"
    assert headers[EVENT_HEADER.lower()] == "alert.raised"
    assert headers[DELIVERY_HEADER.lower()] == str(payload.id)
    assert headers["content-type"] == "application/json"
    assert payload.webhook_id == webhook
    assert payload.alert.id == alert_id
    assert payload.alert.kind == "backup_failed"
    assert payload.alert.occurrences == 1
    assert payload.alert.title == "Backups of shop/prod are failing"
    body = json.loads(request.body)
    assert set(body["alert"]) >= {"organizationId", "environmentId", "lastSeenAt", "resolvedAt"}
    # Another secret does not verify it.
    with pytest.raises(ValueError, match="does not match"):
        verify_signature("whsec-of-other", headers[SIGNATURE_HEADER.lower()], request.body)

    attempts = await stack.attempts(payload.id, lambda found: len(found) >= 1)
    assert [(a.attempt, a.status, a.response_status) for a in attempts] == [(1, "delivered", 204)]
    assert attempts[0].webhook_id == webhook
    assert attempts[0].alert_id == alert_id
    assert attempts[0].change == "alert.raised"
    # The deliveries of one change are written together: none for the other kind or org.
    assert stack.deliveries(not_this_kind) == []
    assert stack.deliveries(other) == []
    assert unwanted.connections == 0
    assert foreign.connections == 0

    # The next change of the alert goes out as the alert now stands.
    await stack.publish(
        AlertResolved(
            alert_id=alert_id,
            organization_id=org,
            environment_id=raised.environment_id,
            reason="a later backup completed",
            resolved_at=datetime.now(UTC),
        ),
        alert_id,
        raised.environment_id,
        org,
    )
    await eventually(lambda: len(receiver.requests) == 2, "the second POST")
    resolved = WebhookPayload.model_validate_json(receiver.requests[1].body)
    assert resolved.type == "alert.resolved"
    assert resolved.alert.resolved_at is not None
    assert resolved.id != payload.id


@pytest.mark.integration
async def test_a_500_is_retried_under_the_same_delivery_id_until_delivered(
    stack: Stack, receivers: Callable[..., Receiver]
) -> None:
    org = uuid.uuid4()
    store_secret(stack, org, "whsec")
    await stack.start()
    receiver = receivers(500, 200)
    webhook = await stack.register(org, receiver.url("localhost"))
    await stack.raise_alert(org)
    await eventually(lambda: len(receiver.requests) == 2, "the retry")

    ids = {r.headers[DELIVERY_HEADER] for r in receiver.requests}
    assert len(ids) == 1
    delivery_id = uuid.UUID(ids.pop())
    # Each attempt is signed afresh, and both verify.
    for request in receiver.requests:
        verify_signature("whsec", request.headers[SIGNATURE_HEADER], request.body)
    assert receiver.requests[0].body == receiver.requests[1].body
    # The retry waited the backoff: at least half the base delay (equal jitter).
    assert receiver.requests[1].at - receiver.requests[0].at >= 0.1

    attempts = await stack.attempts(delivery_id, lambda found: len(found) >= 2)
    assert [(a.attempt, a.status, a.response_status) for a in attempts] == [
        (1, "retrying", 500),
        (2, "delivered", 200),
    ]
    assert attempts[0].error == "the receiver answered 500"
    assert attempts[0].next_attempt_at is not None
    assert attempts[1].error is None
    [row] = stack.deliveries(webhook)
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("delivered", 2, None)


@pytest.mark.integration
async def test_a_receiver_hanging_for_minutes_delays_no_other_webhook(
    stack: Stack, receivers: Callable[..., Receiver]
) -> None:
    org = uuid.uuid4()
    store_secret(stack, org, "whsec")
    # Three slots, two per webhook; a timeout far beyond the test, so the hanging
    # receiver holds its slots throughout.
    await stack.start(
        webhook_timeout_seconds=300,
        webhook_max_in_flight=3,
        webhook_max_in_flight_per_webhook=2,
    )
    hanging = receivers(default="hang")
    healthy = receivers()
    await stack.register(org, hanging.url("localhost"), kinds=["backup_failed"])
    await stack.register(org, healthy.url("localhost"), kinds=["restore_failed"])

    for _ in range(3):
        await stack.raise_alert(org, "backup_failed")
    await eventually(lambda: len(hanging.requests) == 2, "two hanging POSTs")

    started = time.monotonic()
    await stack.raise_alert(org, "restore_failed")
    await eventually(lambda: len(healthy.requests) == 1, "the other webhook's POST", 20)
    took = time.monotonic() - started
    assert took < 5, f"the healthy receiver waited {took:.1f} s"
    # The hanging receiver still holds its two POSTs; its third waits for a slot.
    assert len(hanging.requests) == 2
    assert not hanging.release.is_set()


@pytest.mark.integration
async def test_refused_addresses_and_missing_secrets_are_failed_attempts_saying_why(
    stack: Stack, receivers: Callable[..., Receiver]
) -> None:
    org = uuid.uuid4()
    store_secret(stack, org, "whsec-never-shown")
    await stack.start(webhook_retry_for_seconds=60)
    loopback, unsigned = receivers(), receivers()
    # 127.0.0.1 is not among the operator's hosts here (only "localhost" is).
    denied = await stack.register(org, loopback.url("127.0.0.1"))
    no_secret = await stack.register(org, unsigned.url("localhost"), secret_ref="secret:nope")
    await stack.raise_alert(org)

    await eventually(
        lambda: all(
            stack.deliveries(w) and stack.deliveries(w)[0]["attempts"] >= 1
            for w in (denied, no_secret)
        ),
        "the first attempts",
    )
    [denied_row], [secret_row] = stack.deliveries(denied), stack.deliveries(no_secret)
    attempts = await stack.attempts(denied_row["delivery_id"], lambda found: len(found) >= 1)
    assert attempts[0].status == "retrying"
    assert attempts[0].response_status is None
    assert "no longer allowed" in (attempts[0].error or "")
    assert "plain http only to hosts the operator allows" in (attempts[0].error or "")
    missing = await stack.attempts(secret_row["delivery_id"], lambda found: len(found) >= 1)
    assert missing[0].error is not None
    assert "secret:nope" in missing[0].error
    assert "no secret of that name" in missing[0].error
    for attempt in (*attempts, *missing):
        assert str(loopback.port) not in (attempt.error or "")
        assert str(unsigned.port) not in (attempt.error or "")
        assert "whsec" not in (attempt.error or "")
    assert loopback.connections == 0
    assert unsigned.connections == 0


@pytest.mark.integration
async def test_retries_end_failed_after_retry_for(
    stack: Stack, receivers: Callable[..., Receiver]
) -> None:
    org = uuid.uuid4()
    store_secret(stack, org, "whsec")
    await stack.start(webhook_retry_for_seconds=2)
    receiver = receivers(default=503)
    webhook = await stack.register(org, receiver.url("localhost"))
    await stack.raise_alert(org)
    await eventually(
        lambda: (
            bool(stack.deliveries(webhook)) and stack.deliveries(webhook)[0]["status"] == "failed"
        ),
        "the delivery to fail",
    )
    [row] = stack.deliveries(webhook)
    attempts = await stack.attempts(row["delivery_id"], lambda f: len(f) >= row["attempts"])
    assert len(attempts) == row["attempts"] >= 3
    assert [a.status for a in attempts] == ["retrying"] * (len(attempts) - 1) + ["failed"]
    assert attempts[-1].next_attempt_at is None
    assert all(a.response_status == 503 for a in attempts)
    posted = len(receiver.requests)
    assert posted == len(attempts)
    await asyncio.sleep(1.5)
    assert len(receiver.requests) == posted  # no attempt after failed


@pytest.mark.integration
async def test_the_claim_of_a_killed_deliverer_is_taken_over_after_it_expires(
    stack: Stack, receivers: Callable[..., Receiver]
) -> None:
    org = uuid.uuid4()
    store_secret(stack, org, "whsec")
    claim = 4.0
    first = await stack.start(webhook_timeout_seconds=2, webhook_claim_seconds=claim)
    # The first POST hangs: the instance is killed while it is in flight.
    receiver = receivers("hang", 200)
    webhook = await stack.register(org, receiver.url("localhost"))
    await stack.raise_alert(org)
    await eventually(lambda: len(receiver.requests) == 1, "the first POST")
    await stack.stop()  # cancels the attempt mid-flight: nothing recorded, claim left
    [row] = stack.deliveries(webhook)
    assert row["claimed_by"] == first.instance_id
    assert row["attempts"] == 0

    second = await stack.start(webhook_timeout_seconds=2, webhook_claim_seconds=claim)
    await eventually(lambda: len(receiver.requests) == 2, "the POST of the second instance")
    waited = receiver.requests[1].at - receiver.requests[0].at
    assert waited >= claim - 0.5, f"taken over after {waited:.1f} s, before the claim expired"
    assert receiver.requests[1].headers[DELIVERY_HEADER] == str(row["delivery_id"])
    attempts = await stack.attempts(row["delivery_id"], lambda found: len(found) >= 1)
    assert [(a.attempt, a.status) for a in attempts] == [(1, "delivered")]
    await eventually(
        lambda: stack.deliveries(webhook)[0]["status"] == "delivered", "the row to finish"
    )
    assert second.instance_id != first.instance_id


@pytest.mark.integration
async def test_a_removed_webhook_gets_no_further_attempts(
    stack: Stack, receivers: Callable[..., Receiver]
) -> None:
    org = uuid.uuid4()
    store_secret(stack, org, "whsec")
    await stack.start(webhook_retry_base_seconds=1.5, webhook_retry_max_delay_seconds=1.5)
    receiver = receivers(default=500)
    webhook = await stack.register(org, receiver.url("localhost"))
    await stack.raise_alert(org)
    await eventually(lambda: len(receiver.requests) == 1, "the first attempt")
    await stack.publish(
        WebhookRemoved(webhook_id=webhook, organization_id=org, removed_at=datetime.now(UTC)),
        webhook,
        None,
        org,
    )
    await eventually(
        lambda: stack.deliveries(webhook)[0]["status"] == "cancelled", "the cancellation"
    )
    [row] = stack.deliveries(webhook)
    assert row["attempts"] == 1
    assert len(receiver.requests) == 1


@pytest.mark.integration
async def test_a_registration_read_after_a_later_change_still_gets_it_and_an_earlier_one_not(
    stack: Stack, receivers: Callable[..., Receiver]
) -> None:
    """Registrations come through a consumer of their own: one that lags must not lose the
    changes that happened after the webhook was registered, and a webhook must not get a
    change from before it existed, whichever of the two is read first."""
    org = uuid.uuid4()
    store_secret(stack, org, "whsec-late")
    await stack.start()
    owed, not_owed = receivers(), receivers()
    alert_id, raised = await stack.raise_alert(org)
    changed_at = datetime.fromisoformat(str(raised.payload["raisedAt"]).replace("Z", "+00:00"))
    await eventually(
        lambda: bool(
            stack.rows(
                f"SELECT 1 FROM {SCHEMA}.alert_changes WHERE event_id = %s", raised.message_id
            )
        ),
        "the change, read before any webhook",
    )

    async def register(receiver: Receiver, registered_at: datetime) -> uuid.UUID:
        webhook_id = uuid.uuid4()
        await stack.publish(
            WebhookRegistered(
                webhook_id=webhook_id,
                organization_id=org,
                url=receiver.url("localhost"),
                signing_secret_ref="secret:hook",
                kinds=[],
                registered_at=registered_at,
            ),
            webhook_id,
            None,
            org,
        )
        await eventually(
            lambda: bool(stack.rows(f"SELECT 1 FROM {SCHEMA}.webhooks WHERE id = %s", webhook_id)),
            "the registration",
            within=180.0,
        )
        return webhook_id

    before = await register(owed, changed_at - timedelta(seconds=10))
    after = await register(not_owed, changed_at + timedelta(seconds=10))
    await eventually(lambda: len(owed.requests) == 1, "the owed change's POST")
    payload = WebhookPayload.model_validate_json(owed.requests[0].body)
    assert (payload.type, payload.alert.id, payload.webhook_id) == (
        "alert.raised",
        alert_id,
        before,
    )
    headers = {k.lower(): v for k, v in owed.requests[0].headers.items()}
    assert verify_signature("whsec-late", headers[SIGNATURE_HEADER.lower()], owed.requests[0].body)
    assert stack.deliveries(after) == []
    assert not_owed.connections == 0
