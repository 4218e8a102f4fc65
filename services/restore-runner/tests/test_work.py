"""The work table on real PostgreSQL: one holder per restore, one restore per target."""

from __future__ import annotations

import time
import uuid

from tidemark_backup_runner.domain import WorkPolicy
from tidemark_restore_runner.work import WorkTable

POLICY = WorkPolicy(lease_seconds=0.5, max_attempts=2)


def test_two_restores_into_one_target_never_run_at_once(work: WorkTable) -> None:
    target = uuid.uuid4()
    first, second, elsewhere = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    work.ensure(first, target)
    work.ensure(second, target)
    work.ensure(elsewhere, uuid.uuid4())
    a, b = uuid.uuid4(), uuid.uuid4()
    claim = work.claim(a, POLICY)
    assert claim is not None
    assert claim.restore_id == first
    other = work.claim(b, POLICY)
    assert other is not None
    assert other.restore_id == elsewhere
    assert work.claim(b, POLICY) is None, "the second restore of the target waits"
    work.finish(claim.lease)
    after = work.claim(b, POLICY)
    assert after is not None
    assert after.restore_id == second


def test_an_expired_lease_is_taken_over_with_the_phase_it_reached(work: WorkTable) -> None:
    restore = uuid.uuid4()
    work.ensure(restore, uuid.uuid4())
    first = work.claim(uuid.uuid4(), POLICY)
    assert first is not None
    assert first.previous_owner is None
    work.note_phase(first.lease, "restoring")
    assert work.claim(uuid.uuid4(), POLICY) is None, "held while the lease runs"
    time.sleep(0.7)
    assert not work.renew(first.lease, POLICY)
    taken = work.claim(uuid.uuid4(), POLICY)
    assert taken is not None
    assert taken.previous_owner == first.lease.owner
    assert taken.previous_phase == "restoring"
    assert taken.step == "run"
    assert taken.lease.attempt == 2
    time.sleep(0.7)
    last = work.claim(uuid.uuid4(), POLICY)
    assert last is not None
    assert last.step == "give_up", "attempts are bounded"
