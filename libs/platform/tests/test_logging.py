"""Log context: what a block binds reaches every line inside it, and nothing outside."""

from __future__ import annotations

import asyncio
import uuid

import structlog
from tidemark_platform.logging import bound_log_context


async def test_a_bound_context_reaches_threads_and_is_restored_after() -> None:
    correlation_id, backup_id = uuid.uuid4(), uuid.uuid4()
    structlog.contextvars.bind_contextvars(service="test")
    with bound_log_context(correlation_id=correlation_id, backup_id=backup_id, absent=None):
        inside = await asyncio.to_thread(structlog.contextvars.get_contextvars)
    after = structlog.contextvars.get_contextvars()
    structlog.contextvars.unbind_contextvars("service")
    assert inside == {
        "service": "test",
        "correlation_id": str(correlation_id),
        "backup_id": str(backup_id),
    }
    assert after == {"service": "test"}
