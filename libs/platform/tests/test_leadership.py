"""One leader per log, on real PostgreSQL: a leader that loses its session stops leading."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from tidemark_platform.leadership import LEADERSHIP_LOCK_CLASS, Leadership, lock_key

pytestmark = pytest.mark.integration


def test_the_lock_key_is_derived_stably_from_the_log_name() -> None:
    # Pinned: every version and host must agree on it, or two instances would both lead.
    assert lock_key("backup_runner:relay:kafka") == (LEADERSHIP_LOCK_CLASS, -806_358_776)
    assert lock_key("a") != lock_key("b")


def holder_pids(database_url: str, name: str) -> list[int]:
    classid, objid = lock_key(name)
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::int = %s AND objid::int = %s",
            (classid, objid),
        ).fetchall()
    return [row[0] for row in rows]


async def test_one_leader_per_log_and_leadership_moves_when_the_leader_session_dies(
    database_url: str,
) -> None:
    name = f"test:relay:{uuid.uuid4().hex}"
    first, second = Leadership(database_url, name), Leadership(database_url, name)
    other_log = Leadership(database_url, f"{name}:other")
    try:
        assert await first.is_leader()
        assert not await second.is_leader()
        assert await first.is_leader()  # still leading on the next round
        assert await other_log.is_leader(), "another log has a leader of its own"
        [pid] = holder_pids(database_url, name)
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The lock goes with the session (pg_terminate_backend does not wait for that):
        # the other instance takes it...
        deadline = time.monotonic() + 10
        while not await second.is_leader():
            assert time.monotonic() < deadline, "the lock outlived the leader's session"
            await asyncio.sleep(0.05)
        # ...and the old leader, whose session is gone, no longer leads.
        assert first.holds_lock, "it has not noticed yet"
        assert not await first.is_leader()
        assert not first.holds_lock
        assert holder_pids(database_url, name) != [pid]
        assert len(holder_pids(database_url, name)) == 1
    finally:
        for leadership in (first, second, other_log):
            await leadership.close()
    assert holder_pids(database_url, name) == []
