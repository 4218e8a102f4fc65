"""The catalog's aggregates: registrations of projects, environments, destinations and
webhooks, no I/O.

Names are unique within their scope (an organization's projects and destinations, a
project's environments). A ``NameClaim`` whose id is derived from (kind, scope, name) is
saved in the same transaction as the registration, so two registrations of one name
collide in the event store instead of both succeeding.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from eventsourcing.domain import Aggregate, event

DestinationType = Literal["local", "s3"]
NAME_CLAIM_NAMESPACE = uuid.UUID("0c6a3c1e-7d4f-4b8e-9a53-3b1f2e8d6c71")


class CatalogError(Exception):
    """A registration the catalog's current state does not allow."""


class NameTaken(CatalogError):
    pass


class Project(Aggregate):
    class Registered(Aggregate.Created):
        project_id: uuid.UUID
        organization_id: uuid.UUID
        name: str
        registered_at: datetime

    @staticmethod
    def create_id(project_id: uuid.UUID) -> uuid.UUID:
        return project_id

    @event(Registered)
    def __init__(
        self,
        *,
        project_id: uuid.UUID,
        organization_id: uuid.UUID,
        name: str,
        registered_at: datetime,
    ) -> None:
        self.organization_id = organization_id
        self.name = name
        self.registered_at = registered_at


class Environment(Aggregate):
    class Registered(Aggregate.Created):
        environment_id: uuid.UUID
        organization_id: uuid.UUID
        project_id: uuid.UUID
        name: str
        database: dict[str, Any]  # references only: ``passwordRef``, never a secret
        cluster: dict[str, Any] | None
        files_path: str | None
        registered_at: datetime

    @staticmethod
    def create_id(environment_id: uuid.UUID) -> uuid.UUID:
        return environment_id

    @event(Registered)
    def __init__(
        self,
        *,
        environment_id: uuid.UUID,
        organization_id: uuid.UUID,
        project_id: uuid.UUID,
        name: str,
        database: dict[str, Any],
        cluster: dict[str, Any] | None,
        files_path: str | None,
        registered_at: datetime,
    ) -> None:
        self.organization_id = organization_id
        self.project_id = project_id
        self.name = name
        self.database = database
        self.cluster = cluster
        self.files_path = files_path


class Destination(Aggregate):
    class Registered(Aggregate.Created):
        destination_id: uuid.UUID
        organization_id: uuid.UUID
        name: str
        type: DestinationType
        config: dict[str, Any]
        is_default: bool
        registered_at: datetime

    class Removed(Aggregate.Event):
        organization_id: uuid.UUID
        removed_at: datetime

    @staticmethod
    def create_id(destination_id: uuid.UUID) -> uuid.UUID:
        return destination_id

    @event(Registered)
    def __init__(
        self,
        *,
        destination_id: uuid.UUID,
        organization_id: uuid.UUID,
        name: str,
        type: DestinationType,
        config: dict[str, Any],
        is_default: bool,
        registered_at: datetime,
    ) -> None:
        self.organization_id = organization_id
        self.name = name
        self.type = type
        self.config = config
        self.is_default = is_default
        self.removed = False

    def remove(self, removed_at: datetime) -> None:
        if self.removed:
            raise CatalogError("the destination is already removed")
        self._removed(organization_id=self.organization_id, removed_at=removed_at)

    @event(Removed)
    def _removed(self, organization_id: uuid.UUID, removed_at: datetime) -> None:
        self.removed = True


class Webhook(Aggregate):
    """An organization's webhook endpoint. It has no name to claim: two registrations of
    one URL are two webhooks (each delivery is signed with its own secret)."""

    class Registered(Aggregate.Created):
        webhook_id: uuid.UUID
        organization_id: uuid.UUID
        url: str
        signing_secret_ref: str  # a reference (``secret:NAME``), never the secret
        kinds: list[str]  # empty: every kind
        registered_at: datetime

    class Removed(Aggregate.Event):
        organization_id: uuid.UUID
        removed_at: datetime

    @staticmethod
    def create_id(webhook_id: uuid.UUID) -> uuid.UUID:
        return webhook_id

    @event(Registered)
    def __init__(
        self,
        *,
        webhook_id: uuid.UUID,
        organization_id: uuid.UUID,
        url: str,
        signing_secret_ref: str,
        kinds: list[str],
        registered_at: datetime,
    ) -> None:
        self.organization_id = organization_id
        self.url = url
        self.signing_secret_ref = signing_secret_ref
        self.kinds = kinds
        self.removed = False

    def remove(self, removed_at: datetime) -> None:
        if self.removed:
            raise CatalogError("the webhook is already removed")
        self._removed(organization_id=self.organization_id, removed_at=removed_at)

    @event(Removed)
    def _removed(self, organization_id: uuid.UUID, removed_at: datetime) -> None:
        self.removed = True


class NameClaim(Aggregate):
    """A name held by one registration within a scope; released names can be claimed again."""

    class Claimed(Aggregate.Created):
        owner_id: uuid.UUID
        claim_id: uuid.UUID

    class Released(Aggregate.Event):
        pass

    class Reclaimed(Aggregate.Event):
        owner_id: uuid.UUID

    @staticmethod
    def id_for(kind: str, scope: uuid.UUID, name: str) -> uuid.UUID:
        return uuid.uuid5(NAME_CLAIM_NAMESPACE, f"{kind}:{scope}:{name}")

    @staticmethod
    def create_id(owner_id: uuid.UUID, claim_id: uuid.UUID) -> uuid.UUID:
        return claim_id

    @event(Claimed)
    def __init__(self, *, owner_id: uuid.UUID, claim_id: uuid.UUID) -> None:
        self.owner_id: uuid.UUID | None = owner_id

    def release(self) -> None:
        if self.owner_id is not None:
            self._released()

    @event(Released)
    def _released(self) -> None:
        self.owner_id = None

    def reclaim(self, owner_id: uuid.UUID) -> None:
        if self.owner_id is not None:
            raise NameTaken("the name is taken")
        self._reclaimed(owner_id=owner_id)

    @event(Reclaimed)
    def _reclaimed(self, owner_id: uuid.UUID) -> None:
        self.owner_id = owner_id
