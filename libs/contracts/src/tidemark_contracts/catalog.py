"""Messages of the catalog: the registrations (projects, environments, destinations, webhooks) that
every service follows into a view of its own, so no service reads another's tables."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from tidemark_contracts.backup import DatabaseTarget, DestinationConfig
from tidemark_contracts.base import Message, UtcDatetime, WireModel


class ClusterSpec(WireModel):
    """The environment's own PostgreSQL cluster on the runner's host (for ``full`` backups)."""

    data_directory: str
    bin_directory: str
    port: int


class ProjectRegistered(Message):
    message_type: ClassVar[str] = "catalog.ProjectRegistered"
    version: Literal[1] = 1
    project_id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    registered_at: UtcDatetime


class EnvironmentRegistered(Message):
    """An environment and how to reach its database: references only, never a secret."""

    message_type: ClassVar[str] = "catalog.EnvironmentRegistered"
    version: Literal[1] = 1
    environment_id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID
    name: str
    database: DatabaseTarget
    cluster: ClusterSpec | None = None
    files_path: str | None = None
    registered_at: UtcDatetime


class DestinationRegistered(Message):
    message_type: ClassVar[str] = "catalog.DestinationRegistered"
    version: Literal[1] = 1
    destination_id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    type: Literal["local", "s3"]
    config: DestinationConfig
    is_default: bool
    registered_at: UtcDatetime


class DestinationRemoved(Message):
    message_type: ClassVar[str] = "catalog.DestinationRemoved"
    version: Literal[1] = 1
    destination_id: uuid.UUID
    organization_id: uuid.UUID
    removed_at: UtcDatetime


class WebhookRegistered(Message):
    """An organization's webhook endpoint: alert changes of ``kinds`` (every kind when
    empty) are POSTed to ``url``, signed with the secret ``signingSecretRef`` names (a
    reference, never the secret)."""

    message_type: ClassVar[str] = "catalog.WebhookRegistered"
    version: Literal[1] = 1
    webhook_id: uuid.UUID
    organization_id: uuid.UUID
    url: str
    signing_secret_ref: str
    kinds: list[str]
    registered_at: UtcDatetime


class WebhookRemoved(Message):
    message_type: ClassVar[str] = "catalog.WebhookRemoved"
    version: Literal[1] = 1
    webhook_id: uuid.UUID
    organization_id: uuid.UUID
    removed_at: UtcDatetime
