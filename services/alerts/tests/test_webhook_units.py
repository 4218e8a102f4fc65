"""Webhook delivery without I/O: the retry rule, delivery ids, the WebhookDelivery
aggregate and its translation into WebhookDeliveryAttempted (in-memory event store)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from tidemark_alerts.webhooks.application import Attempt, DeliveryRef, WebhookDeliveryApplication
from tidemark_alerts.webhooks.domain import DeliveryClosed, RetryPolicy, delivery_id
from tidemark_contracts.alert import WebhookDeliveryAttempted
from tidemark_contracts.topics import ALERT_EVENTS

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(base_seconds=2, max_delay_seconds=300, retry_for_seconds=86400)


@pytest.mark.parametrize(
    ("attempt", "planned"), [(1, 2), (2, 4), (3, 8), (4, 16), (8, 256), (9, 300), (60, 300)]
)
def test_the_delay_doubles_up_to_the_cap_with_equal_jitter(attempt: int, planned: float) -> None:
    rng = random.Random(attempt)
    delays = [POLICY.delay(attempt, rng) for _ in range(500)]
    assert all(planned / 2 <= d <= planned for d in delays)
    # Jitter, not a constant: the draws spread over the upper half.
    assert max(delays) - min(delays) > planned / 4


def test_a_retry_later_than_retry_for_after_the_change_ends_the_delivery() -> None:
    policy = RetryPolicy(base_seconds=10, max_delay_seconds=10, retry_for_seconds=60)
    next_at = policy.after_failure(1, T0, T0 + timedelta(seconds=40), random.Random(1))
    assert next_at is not None
    assert T0 + timedelta(seconds=45) <= next_at <= T0 + timedelta(seconds=50)
    # At 55 s every draw (5..10 s) lands after created + 60 s.
    for seed in range(50):
        assert policy.after_failure(3, T0, T0 + timedelta(seconds=55), random.Random(seed)) is None


def test_delivery_ids_are_one_per_webhook_and_event() -> None:
    webhook, other_webhook, event, other_event = (uuid.uuid4() for _ in range(4))
    assert delivery_id(webhook, event) == delivery_id(webhook, event)
    assert delivery_id(webhook, event) != delivery_id(other_webhook, event)
    assert delivery_id(webhook, event) != delivery_id(webhook, other_event)
    assert delivery_id(webhook, event) == uuid.uuid5(webhook, str(event))


def ref() -> DeliveryRef:
    return DeliveryRef(
        delivery_id=uuid.uuid4(),
        webhook_id=uuid.uuid4(),
        organization_id=uuid.uuid4(),
        alert_id=uuid.uuid4(),
        environment_id=uuid.uuid4(),
        change="alert.raised",
    )


def attempt(number: int, status: str, next_at: datetime | None = None) -> Attempt:
    return Attempt(
        number=number,
        status=status,  # type: ignore[arg-type]
        response_status=500 if status != "delivered" else 204,
        error=None if status == "delivered" else "the receiver answered 500",
        attempted_at=T0 + timedelta(seconds=number),
        next_attempt_at=next_at,
    )


def no_fence(cursor: object) -> None:
    return None


def test_attempts_become_gap_free_versions_of_one_delivery_on_alert_events() -> None:
    app = WebhookDeliveryApplication()
    delivery = ref()
    assert app.record_attempt(delivery, attempt(1, "retrying", T0), no_fence)
    assert app.record_attempt(delivery, attempt(2, "delivered"), no_fence)
    events = list(app.repository.event_store.get(delivery.delivery_id))
    mapped = [app.to_envelope(e) for e in events]
    assert all(m is not None and m[0] is ALERT_EVENTS for m in mapped)
    envelopes = [m[1] for m in mapped if m is not None]
    messages = [WebhookDeliveryAttempted.model_validate(e.payload) for e in envelopes]
    assert [(m.attempt, m.status) for m in messages] == [(1, "retrying"), (2, "delivered")]
    assert {m.delivery_id for m in messages} == {delivery.delivery_id}
    assert [e.aggregate_version for e in envelopes] == [1, 2]
    assert messages[1].webhook_id == delivery.webhook_id
    assert messages[1].organization_id == delivery.organization_id
    assert messages[0].next_attempt_at == T0
    assert messages[1].next_attempt_at is None
    # Keyed like the alert's own events: by its environment.
    assert envelopes[0].key == envelopes[1].key
    assert envelopes[0].environment_id == delivery.environment_id


def test_an_attempt_recorded_before_is_not_recorded_again() -> None:
    app = WebhookDeliveryApplication()
    delivery = ref()
    assert app.record_attempt(delivery, attempt(1, "retrying", T0), no_fence)
    assert not app.record_attempt(delivery, attempt(1, "retrying", T0), no_fence)
    assert not app.record_attempt(delivery, attempt(3, "delivered"), no_fence)
    assert app.get_delivery(delivery.delivery_id).attempts == 1


def test_a_delivered_or_failed_delivery_takes_no_further_attempt() -> None:
    app = WebhookDeliveryApplication()
    delivered, failed = ref(), ref()
    assert app.record_attempt(delivered, attempt(1, "delivered"), no_fence)
    assert app.record_attempt(failed, attempt(1, "failed"), no_fence)
    assert not app.record_attempt(delivered, attempt(2, "delivered"), no_fence)
    aggregate = app.get_delivery(failed.delivery_id)
    with pytest.raises(DeliveryClosed):
        aggregate.attempted(
            status="delivered",
            response_status=200,
            error=None,
            attempted_at=T0,
            next_attempt_at=None,
        )


def test_a_claim_shorter_than_the_timeout_is_refused() -> None:
    """A claim that ends while its POST may still run lets another instance send the same
    change at the same time."""
    from pydantic import ValidationError
    from tidemark_alerts.webhooks.settings import WebhookSettings

    with pytest.raises(ValidationError, match="longer than webhook_timeout_seconds"):
        WebhookSettings(webhook_timeout_seconds=10, webhook_claim_seconds=5)
    assert WebhookSettings(webhook_timeout_seconds=10, webhook_claim_seconds=11)
    assert WebhookSettings(webhook_timeout_seconds=10).webhook_claim_seconds is None


async def test_a_name_server_that_never_answers_stalls_no_other_work_of_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lookups run on threads of their own: a tenant's name server that hangs must not
    take the loop's default executor, where the event store's work runs (the time limit
    of an attempt cancels the wait, never the blocked lookup)."""
    import asyncio
    import socket
    import threading
    import time

    from tidemark_alerts.webhooks.transport import resolve

    release = threading.Event()
    real = socket.getaddrinfo

    def slow(host: str, *args: object, **kwargs: object) -> object:
        if host.endswith(".slow.test"):
            release.wait(30)  # a name server that does not answer
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    lookups = [
        asyncio.ensure_future(asyncio.wait_for(resolve(f"h{n}.slow.test", 443), 0.2))
        for n in range(12)  # more than the default executor's threads on 2 cores
    ]
    try:
        for lookup in lookups:
            with pytest.raises(TimeoutError):
                await lookup
        started = time.monotonic()
        await asyncio.wait_for(asyncio.to_thread(lambda: None), 5)
        assert time.monotonic() - started < 0.5, "the default executor was held by lookups"
    finally:
        release.set()
