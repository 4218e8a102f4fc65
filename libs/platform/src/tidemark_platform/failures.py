"""Which errors pass by themselves: the one place that says what is transient.

A *transient* error says that something a service needs (its PostgreSQL, Kafka) is
unreachable or slow for now: the same work, tried again after a while, can succeed, so
it is retried with backoff, a bounded number of times. Every other error is *permanent*:
bad data, a refused credential, a bug. Trying again cannot change its outcome, so the
work it belongs to ends at once, saying why.
"""

from __future__ import annotations

import psycopg
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from eventsourcing.persistence import InterfaceError, OperationalError
from psycopg_pool import PoolTimeout, TooManyRequests

TRANSIENT: tuple[type[BaseException], ...] = (
    # PostgreSQL unreachable, restarting, or the connection cut; and the pools waiting
    # for a connection that does not come.
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OperationalError,  # eventsourcing's wrappers of the two above
    InterfaceError,
    PoolTimeout,
    TooManyRequests,
    # Kafka unreachable or not answering in time.
    KafkaConnectionError,
    KafkaTimeoutError,
    # Any network operation that timed out or whose connection was refused or reset.
    TimeoutError,
    ConnectionError,
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) may pass if the work is retried."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, TRANSIENT):
            return True
        if isinstance(current, KafkaError) and current.retriable:
            return True
        seen.add(id(current))
        current = current.__cause__
    return False
