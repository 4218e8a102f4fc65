"""The deliverer: on every instance, claims due delivery rows and POSTs them, each attempt
recorded as a ``WebhookDeliveryAttempted`` and the row finished or rescheduled in the same
transaction.

Claims are rows, not locks: ``FOR UPDATE SKIP LOCKED`` lets instances claim side by side,
and a claim expires (longer than any attempt may take), so the claims of an instance that
died come back to the others. An instance holds at most ``max_in_flight`` POSTs, and at
most ``max_per_webhook`` to any one webhook: a receiver that hangs holds that many slots
until the timeout, never the rest, so it delays no other receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram
from psycopg import Cursor
from psycopg.rows import DictRow
from tidemark_contracts import utc_now
from tidemark_contracts.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from tidemark_platform.credentials import SecretError
from tidemark_platform.database import Pool
from tidemark_platform.eventstore import Fence
from tidemark_platform.logging import get_logger

from tidemark_alerts.webhooks.application import Attempt, DeliveryRef, WebhookDeliveryApplication
from tidemark_alerts.webhooks.domain import RetryPolicy, Status
from tidemark_alerts.webhooks.transport import DeliveryError, WebhookClient

log = get_logger(__name__)

DELIVERY_ATTEMPTS = Counter(
    "tidemark_webhook_deliveries_total",
    "Webhook delivery attempts by the status they left the delivery in "
    "(delivered, retrying, failed; cancelled: the webhook was removed)",
    ["status"],
)
ATTEMPT_SECONDS = Histogram(
    "tidemark_webhook_attempt_seconds",
    "Time of one webhook delivery attempt, secret lookup to the receiver's answer",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("tidemark_webhook_in_flight", "Webhook POSTs this instance has open")

ResolveSecret = Callable[[str, uuid.UUID], Awaitable[str | None]]


class ClaimLost(Exception):
    """The deliverer no longer holds the delivery (its claim expired and another took it)."""


@dataclass(frozen=True)
class Claimed:
    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    organization_id: uuid.UUID
    alert_id: uuid.UUID
    environment_id: uuid.UUID | None
    change: str
    body: str
    attempts: int
    created_at: datetime
    url: str | None  # None: the webhook was removed
    signing_secret_ref: str | None

    @property
    def ref(self) -> DeliveryRef:
        return DeliveryRef(
            self.delivery_id,
            self.webhook_id,
            self.organization_id,
            self.alert_id,
            self.environment_id,
            self.change,
        )


class DeliveryTable:
    """The delivery rows the projection writes and the deliverers claim."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

    async def claim(
        self, owner: uuid.UUID, claim_seconds: float, skip_webhooks: list[uuid.UUID]
    ) -> Claimed | None:
        """Claim the most overdue delivery that no live claim holds, of a webhook not in
        ``skip_webhooks`` (those this deliverer has at its per-webhook limit)."""
        table = f"{self.schema}.deliveries"
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"UPDATE {table} d SET claimed_by = %s, "
                "claim_expires_at = now() + make_interval(secs => %s) "
                f"WHERE d.delivery_id IN (SELECT delivery_id FROM {table} "
                "WHERE status = 'pending' AND next_attempt_at <= now() "
                "AND (claim_expires_at IS NULL OR claim_expires_at <= now()) "
                "AND NOT (webhook_id = ANY(%s)) "
                "ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED) "
                "RETURNING d.delivery_id, d.webhook_id, d.organization_id, d.alert_id, "
                "d.environment_id, d.change, d.body, d.attempts, d.created_at, "
                f"(SELECT w.url FROM {self.schema}.webhooks w WHERE w.id = d.webhook_id) "
                "AS url, "
                f"(SELECT w.signing_secret_ref FROM {self.schema}.webhooks w "
                "WHERE w.id = d.webhook_id) AS signing_secret_ref",
                (owner, claim_seconds, skip_webhooks),
            )
            row = await cursor.fetchone()
        return Claimed(**row) if row is not None else None

    async def cancel(self, claimed: Claimed, owner: uuid.UUID) -> None:
        """The webhook was removed: its pending deliveries are dropped, unattempted."""
        async with self.pool.connection() as conn:
            await conn.execute(
                f"UPDATE {self.schema}.deliveries SET status = 'cancelled', claimed_by = NULL, "
                "claim_expires_at = NULL WHERE delivery_id = %s AND claimed_by = %s",
                (claimed.delivery_id, owner),
            )

    def fence(self, claimed: Claimed, owner: uuid.UUID, attempt: Attempt) -> Fence:
        """Runs in the transaction that records ``attempt``: finishes or reschedules the
        row, and refuses the record when this deliverer no longer holds the delivery."""
        row_status = {"delivered": "delivered", "failed": "failed"}.get(attempt.status, "pending")
        query = (
            f"UPDATE {self.schema}.deliveries SET status = %s, attempts = %s, "
            "next_attempt_at = COALESCE(%s, next_attempt_at), claimed_by = NULL, "
            "claim_expires_at = NULL, last_response_status = %s, last_error = %s "
            "WHERE delivery_id = %s AND claimed_by = %s AND attempts = %s RETURNING 1"
        )
        params = (
            row_status,
            attempt.number,
            attempt.next_attempt_at,
            attempt.response_status,
            attempt.error,
            claimed.delivery_id,
            owner,
            attempt.number - 1,
        )

        def check(cursor: Cursor[DictRow]) -> None:
            # The recorder's transaction is in pipeline mode: only fetching the result
            # syncs it (rowcount is not known before).
            cursor.execute(query, params)
            if cursor.fetchone() is None:
                raise ClaimLost(f"delivery {claimed.delivery_id} is no longer held")

        return check


class Deliverer:
    def __init__(
        self,
        table: DeliveryTable,
        app: WebhookDeliveryApplication,
        client: WebhookClient,
        resolve_secret: ResolveSecret,
        retry: RetryPolicy,
        *,
        owner: uuid.UUID,
        max_in_flight: int,
        max_per_webhook: int,
        claim_seconds: float,
        poll_seconds: float,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self.table = table
        self.app = app
        self.client = client
        self.resolve_secret = resolve_secret
        self.retry = retry
        self.owner = owner
        self.max_in_flight = max_in_flight
        self.max_per_webhook = max_per_webhook
        self.claim_seconds = claim_seconds
        self.poll_seconds = poll_seconds
        self.on_recorded = on_recorded
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_webhook: Tally[uuid.UUID] = Tally()

    def wake(self) -> None:
        """New deliveries (or a free slot): look for work now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    await self.fill()
                except Exception:
                    log.exception("webhook_claim_failed")
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a
                # cancellation that arrives with a wake-up, and shutdown would hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_seconds):
                        await self._wake.wait()
        finally:
            # Claims of cancelled attempts expire and come back to whoever is left.
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def fill(self) -> int:
        """Claim due deliveries while there are free slots; how many were started."""
        started = 0
        while len(self._tasks) < self.max_in_flight:
            full = [w for w, n in self._per_webhook.items() if n >= self.max_per_webhook]
            claimed = await self.table.claim(self.owner, self.claim_seconds, full)
            if claimed is None:
                break
            self._per_webhook[claimed.webhook_id] += 1
            task = asyncio.create_task(self._deliver(claimed), name="webhook-delivery")
            self._tasks.add(task)
            IN_FLIGHT.set(len(self._tasks))
            task.add_done_callback(functools.partial(self._done, webhook_id=claimed.webhook_id))
            started += 1
        return started

    def _done(self, task: asyncio.Task[None], *, webhook_id: uuid.UUID) -> None:
        self._tasks.discard(task)
        IN_FLIGHT.set(len(self._tasks))
        self._per_webhook[webhook_id] -= 1
        if self._per_webhook[webhook_id] <= 0:
            del self._per_webhook[webhook_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_delivery_crashed", error=repr(task.exception()))
        self._wake.set()

    async def _deliver(self, claimed: Claimed) -> None:
        if claimed.url is None or claimed.signing_secret_ref is None:
            await self.table.cancel(claimed, self.owner)
            DELIVERY_ATTEMPTS.labels("cancelled").inc()
            return
        number = claimed.attempts + 1
        attempted_at = utc_now()
        started = time.monotonic()
        response_status, error = await self._post(claimed)
        ATTEMPT_SECONDS.observe(time.monotonic() - started)
        status: Status = "delivered"
        next_attempt_at = None
        if error is not None:
            next_attempt_at = self.retry.after_failure(number, claimed.created_at, utc_now())
            status = "retrying" if next_attempt_at is not None else "failed"
        attempt = Attempt(number, status, response_status, error, attempted_at, next_attempt_at)
        fence = self.table.fence(claimed, self.owner, attempt)
        try:
            recorded = await asyncio.to_thread(self.app.record_attempt, claimed.ref, attempt, fence)
        except ClaimLost:
            log.warning("webhook_claim_lost", delivery_id=str(claimed.delivery_id))
            return
        if not recorded:
            log.warning("webhook_attempt_recorded_before", delivery_id=str(claimed.delivery_id))
            return
        DELIVERY_ATTEMPTS.labels(status).inc()
        log.info(
            "webhook_attempted",
            delivery_id=str(claimed.delivery_id),
            webhook_id=str(claimed.webhook_id),
            attempt=number,
            status=status,
            response_status=response_status,
        )
        self.on_recorded()

    async def _post(self, claimed: Claimed) -> tuple[int | None, str | None]:
        """The receiver's status and why it is no delivery (None when it is one)."""
        assert claimed.url is not None
        assert claimed.signing_secret_ref is not None
        try:
            secret = await self.resolve_secret(claimed.signing_secret_ref, claimed.organization_id)
            if not secret:
                return None, "the signing secret reference is empty"
            body = claimed.body.encode()
            headers = {
                SIGNATURE_HEADER: sign(secret, body, int(time.time())),
                DELIVERY_HEADER: str(claimed.delivery_id),
                EVENT_HEADER: claimed.change,
            }
            answer = await self.client.post(claimed.url, body, headers)
        except (SecretError, DeliveryError) as exc:
            return None, str(exc)
        except Exception as exc:  # a defect: recorded without detail (it may hold the URL)
            log.exception("webhook_attempt_crashed", delivery_id=str(claimed.delivery_id))
            return None, f"the attempt failed inside the deliverer ({type(exc).__name__})"
        return answer.status, answer.describe()
