"""A relay source over an event store's notification log (its global, gap-free order)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import Tracking
from tidemark_contracts import Envelope, Topic

from tidemark_platform.eventstore import EventStoreApplication
from tidemark_platform.leadership import Leadership
from tidemark_platform.relay import Outbound

ToEnvelope = Callable[[Any], tuple[Topic, Envelope] | None]


class NotificationLogSource:
    """Reads stored domain events after the relay's tracked position.

    The relay's position is a tracking record in the event store itself, named
    ``relay:<name>``, so it lives and is backed up with the events it points into.
    Of several instances of a service only the leader of the log reads it: the others
    see nothing pending, so no entry is published once per instance.
    """

    def __init__(
        self,
        app: EventStoreApplication,
        to_envelope: ToEnvelope,
        name: str,
        leadership: Leadership,
    ) -> None:
        self.app = app
        self.name = name
        self.leadership = leadership
        self._to_envelope = to_envelope
        self._tracking_name = f"relay:{name}"

    @staticmethod
    def log_name(app: EventStoreApplication, name: str) -> str:
        """The name the relay ``name`` of ``app``'s log is led under."""
        return f"{app.name}:relay:{name}"

    async def pending(self, limit: int) -> Sequence[Outbound]:
        if not await self.leadership.is_leader():
            return []
        return await asyncio.to_thread(self._pending, limit)

    async def acknowledge(self, entries: Sequence[Outbound]) -> None:
        # The log is gap-free and read in order, so the last position covers the batch.
        tracking = Tracking(self._tracking_name, entries[-1].position)
        await asyncio.to_thread(self.app.process_recorder.insert_tracking, tracking)

    def position(self) -> int:
        return self.app.process_recorder.max_tracking_id(self._tracking_name) or 0

    def _pending(self, limit: int) -> list[Outbound]:
        start = self.position() + 1
        notifications = self.app.recorder.select_notifications(start=start, limit=limit)
        entries = []
        for notification in notifications:
            mapped = self._to_envelope(self.app.mapper.to_domain_event(notification))
            if mapped is None:
                entries.append(Outbound(notification.id, None))
                continue
            topic, envelope = mapped
            entries.append(
                Outbound(
                    position=notification.id,
                    topic=topic.name,
                    key=envelope.key,
                    value=envelope.to_bytes(),
                    headers={"message-type": envelope.message_type},
                )
            )
        return entries
