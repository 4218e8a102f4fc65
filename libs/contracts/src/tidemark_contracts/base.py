"""The base every Tidemark message is built on: frozen, camelCase on the wire, versioned."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, PlainSerializer
from pydantic.alias_generators import to_camel


def format_utc(value: datetime) -> str:
    """UTC ISO-8601 with a ``Z`` suffix, as API.md requires of every time."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def utc_now() -> datetime:
    return datetime.now(UTC)


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(lambda value: value.astimezone(UTC)),
    PlainSerializer(format_utc, return_type=str, when_used="json"),
]
"""An aware datetime, normalised to UTC and written as ``...Z``."""


class WireModel(BaseModel):
    """Frozen, camelCase on the wire, tolerant of fields added by newer writers."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
    )


class Message(WireModel):
    """A command, domain event or progress tick.

    ``message_type`` names the message on the wire and ``version`` is its schema version.
    A compatible change adds an optional field and keeps the version; an incompatible
    change is a new message type.
    """

    message_type: ClassVar[str]
    version: int = 1

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
