"""Messages about the services themselves (liveness, readiness)."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from tidemark_contracts.base import Message, UtcDatetime


class ServiceHeartbeat(Message):
    """A service instance says it is alive and whether it is ready for work."""

    message_type: ClassVar[str] = "service.ServiceHeartbeat"
    version: Literal[1] = 1
    service: str
    instance_id: uuid.UUID
    started_at: UtcDatetime
    at: UtcDatetime
    ready: bool
