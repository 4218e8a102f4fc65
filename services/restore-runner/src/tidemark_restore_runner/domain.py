"""The Restore aggregate: one restore's life from request to a replaced (or untouched) target.

No I/O. Its id is the ``restoreId`` the gateway minted, so a redelivered command collides
in the store instead of creating a second restore.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event

Milestone = Literal["safety_backup", "verified", "target_replaced"]
TERMINAL = ("completed", "failed")


class RestoreError(Exception):
    """A command that the restore's current state does not allow."""


class Restore(Aggregate):
    class Requested(Aggregate.Created):
        restore_id: UUID
        organization_id: UUID
        project_id: UUID
        backup_id: UUID
        source_environment_id: UUID
        target_environment_id: UUID
        target_type: str
        pitr_timestamp: datetime | None
        safety_backup_id: UUID | None
        requested_by: str
        requested_at: datetime
        source: dict[str, Any]
        target: dict[str, Any]
        correlation_id: UUID | None = None

    class Started(Aggregate.Event):
        started_at: datetime
        attempt: int

    class MilestoneReached(Aggregate.Event):
        milestone: str
        message: str | None
        at: datetime

    class Completed(Aggregate.Event):
        completed_at: datetime
        duration_ms: int

    class Failed(Aggregate.Event):
        error: str
        target_unchanged: bool
        failed_at: datetime

    @staticmethod
    def create_id(restore_id: UUID) -> UUID:
        return restore_id

    @event(Requested)
    def __init__(
        self,
        *,
        restore_id: UUID,
        organization_id: UUID,
        project_id: UUID,
        backup_id: UUID,
        source_environment_id: UUID,
        target_environment_id: UUID,
        target_type: str,
        pitr_timestamp: datetime | None,
        safety_backup_id: UUID | None,
        requested_by: str,
        requested_at: datetime,
        source: dict[str, Any],
        target: dict[str, Any],
        correlation_id: UUID | None = None,
    ) -> None:
        self.restore_id = restore_id
        self.organization_id = organization_id
        self.project_id = project_id
        self.backup_id = backup_id
        self.source_environment_id = source_environment_id
        self.target_environment_id = target_environment_id
        self.target_type = target_type
        self.pitr_timestamp = pitr_timestamp
        self.safety_backup_id = safety_backup_id
        self.requested_by = requested_by
        self.requested_at = requested_at
        # References only (database ``passwordRef``, destinations' key refs): no secret.
        self.source = source
        self.target = target
        self.correlation_id = correlation_id
        self.status = "pending"
        self.attempt = 0
        self.started_at: datetime | None = None
        self.milestones: list[str] = []
        self.error: str | None = None
        self.target_unchanged: bool | None = None
        self.completed_at: datetime | None = None

    @property
    def restore_type(self) -> str:
        return str(self.source["type"])

    @property
    def base_backup_id(self) -> UUID:
        return UUID(str(self.source["backup_id"]))

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def reached(self, milestone: Milestone) -> bool:
        return milestone in self.milestones

    def start(self, started_at: datetime, attempt: int) -> None:
        if self.is_terminal:
            raise RestoreError(f"cannot start a restore that is {self.status}")
        if attempt <= self.attempt:
            raise RestoreError(f"attempt {attempt} is not after attempt {self.attempt}")
        self._started(started_at=started_at, attempt=attempt)

    @event(Started)
    def _started(self, started_at: datetime, attempt: int) -> None:
        self.status = "running"
        self.attempt = attempt
        if self.started_at is None:
            self.started_at = started_at

    def pass_milestone(
        self, milestone: Milestone, at: datetime, message: str | None = None
    ) -> bool:
        """Record ``milestone``; False (no event) when it was passed already."""
        if self.status != "running":
            raise RestoreError(f"cannot pass a milestone of a restore that is {self.status}")
        if milestone in self.milestones:
            return False
        self._milestone(milestone=milestone, message=message, at=at)
        return True

    @event(MilestoneReached)
    def _milestone(self, milestone: str, message: str | None, at: datetime) -> None:
        self.milestones.append(milestone)

    def complete(self, completed_at: datetime) -> None:
        if self.status != "running":
            raise RestoreError(f"cannot complete a restore that is {self.status}")
        if not self.reached("target_replaced"):
            raise RestoreError("the target was not replaced")
        assert self.started_at is not None
        duration_ms = max(0, int((completed_at - self.started_at).total_seconds() * 1000))
        self._completed(completed_at=completed_at, duration_ms=duration_ms)

    @event(Completed)
    def _completed(self, completed_at: datetime, duration_ms: int) -> None:
        self.status = "completed"
        self.completed_at = completed_at

    def fail(self, error: str, failed_at: datetime, *, target_unchanged: bool = True) -> None:
        if self.is_terminal:
            raise RestoreError(f"cannot fail a restore that is {self.status}")
        if self.reached("target_replaced"):
            # Past the swap the target holds the restored data: nothing is "unchanged".
            target_unchanged = False
        self._failed(error=error, target_unchanged=target_unchanged, failed_at=failed_at)

    @event(Failed)
    def _failed(self, error: str, target_unchanged: bool, failed_at: datetime) -> None:
        self.status = "failed"
        self.error = error
        self.target_unchanged = target_unchanged
        self.completed_at = failed_at


# Phases a restore goes through, in order; the target is touched from ``TOUCHING`` on.
PHASES = (
    "waiting_for_safety_backup",
    "downloading",
    "verifying",
    "restoring",
    "swapping",
    "replaying",
    "done",
)
TOUCHING = frozenset(
    {
        "restoring",
        "swapping",
        "swapped",
        "replaying",
        # The physical restore's own steps once it stops the target (physical.py).
        "stopping",
        "laying_down",
        "starting",
        "verifying_restore",
    }
)
Takeover = Literal["run", "recover"]


def takeover(previous_phase: str | None) -> Takeover:
    """What the instance that takes a restore over does: run it again from the start when
    the earlier holder had not touched the target yet (waiting, downloading, verifying:
    nothing of the target changed), else recover (clean up, then end it as it stands)."""
    return "recover" if previous_phase in TOUCHING else "run"


Step = Literal["run", "recover", "give_up", "give_up_recovering"]


def next_step(attempts_left: bool, previous_owner_known: bool, previous_phase: str | None) -> Step:
    """What an instance that claimed a restore does. The attempt bound comes first, also
    for recoveries: a recovery that keeps failing (the target's server down, a rollback
    that does not finish) ends the restore instead of being retried forever, which would
    leave it ``running`` and its target refusing every later restore (409)."""
    recovering = previous_owner_known and takeover(previous_phase) == "recover"
    if not attempts_left:
        return "give_up_recovering" if recovering else "give_up"
    return "recover" if recovering else "run"


def stopped_reason(phase: str, restore_type: str) -> str:
    left = "left as it was" if restore_type == "db" else "rolled back"
    return f"the restore-runner stopped during {phase}; the target was {left}"


def scratch_database(dbname: str, restore_id: UUID, kind: Literal["tmr", "tmo"]) -> str:
    """``<dbname>_tmr_<8 hex>`` (the new database) or ``…_tmo_…`` (the old one after the
    swap), within PostgreSQL's 63-byte identifiers."""
    suffix = f"_{kind}_{restore_id.hex[:8]}"
    head = dbname.encode()[: 63 - len(suffix)].decode(errors="ignore")
    return head + suffix
