"""The gateway's application layer: requests become catalog events and backup commands.

Registrations are recorded in the gateway's catalog event store (the source of truth,
relayed to ``catalog.events``) and applied to the gateway's own catalog view at once, so
the client reads its write; the relayed copy then changes nothing (version guard). A
backup request becomes a ``RequestBackup`` command in the outbox, committed together with
the pending read-model row, so ``202`` means durable even while Kafka is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from pydantic import TypeAdapter
from tidemark_contracts import (
    BACKUP_COMMANDS,
    CATALOG_EVENTS,
    SCHEDULE_COMMANDS,
    Envelope,
    Message,
    Topic,
    utc_now,
)
from tidemark_contracts import event_message_id as stable_message_id
from tidemark_contracts.backup import (
    BackupDeletionRequested,
    BackupRequested,
    BackupType,
    DatabaseTarget,
    DeleteBackup,
    DestinationConfig,
    DestinationRef,
    DestinationTarget,
    RequestBackup,
)
from tidemark_contracts.catalog import (
    ClusterSpec,
    DestinationRegistered,
    DestinationRemoved,
    EnvironmentRegistered,
    ProjectRegistered,
    WebhookRegistered,
    WebhookRemoved,
)
from tidemark_contracts.schedule import ConfigureSchedule, ScheduleConfigured, ScheduleSettings
from tidemark_platform.database import advisory_key
from tidemark_platform.eventstore import EventStoreApplication
from tidemark_platform.projection import ProjectionRunner
from tidemark_platform.vault import (
    SecretInfo,
    SecretInUse,
    SecretNotFound,
    SecretUse,
    SecretVault,
    secret_name,
)
from tidemark_platform.webhook_policy import WebhookPolicy
from tidemark_schedules import ids

from tidemark_api_gateway.domain import (
    CatalogError,
    Destination,
    DestinationType,
    Environment,
    NameClaim,
    NameTaken,
    Project,
    Webhook,
)
from tidemark_api_gateway.outbox import enqueue
from tidemark_api_gateway.readmodel import SCHEMA

PRODUCER = "api-gateway"
CATALOG_SCHEMA = "gateway_catalog"
DESTINATION_CONFIG: TypeAdapter[DestinationConfig] = TypeAdapter(DestinationConfig)


class Conflict(Exception):
    """The request collides with what exists (a name already taken); ``args[0]``, when
    given, is the kind of claim that collided."""


# The claim a local destination holds on its directory, within its organization.
LOCAL_PATH = "local-path"


class Gone(Exception):
    """The aggregate the request names does not exist (for this organization)."""


class BackupInProgress(Exception):
    """The backup is pending or running: it cannot be deleted before it ends."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class DestinationInUse(Exception):
    """The destination still serves a schedule or holds backups that are not deleted;
    ``args[0]`` says which, without naming anything of another organization."""


class DestinationGone(Exception):
    """A destination the request names was removed while the request was being made."""


class UnknownDestinations(Exception):
    """Destinations a schedule names are not the organization's (or were just removed);
    ``indexes`` are their positions in ``destinationIds``."""

    def __init__(self, indexes: list[int]) -> None:
        super().__init__(indexes)
        self.indexes = indexes


# PUTs of one environment's schedule take turns (on any gateway instance): each reads the
# revision the one before it wrote. Keyed by the environment (``advisory_key``).
SCHEDULE_LOCK_CLASS = 7350020


# A recorded use of a secret whose registration never got saved (the gateway stopped in
# between) is dropped when the secret is deleted, once it is older than this.
STALE_USE_SECONDS = 60.0


class Refused(Exception):
    """A field the request's schema allows, refused after looking at the world (a link
    where a destination goes, a reference to a secret the organization does not have);
    the reason never repeats the value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def link_below(root: Path, organization_id: uuid.UUID, path: str) -> bool:
    """Whether ``<root>/<organization>/<path>`` goes through a symbolic link below the root
    as far as it exists now (the organization's directory included).

    Runners refuse any link there when they write, so one that would lead out later is
    refused as much as one that leads out now; this check only says so early."""
    current = root
    for name in [str(organization_id), *path.split("/")]:
        current = current / name
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            return False  # the rest is created by the runner, as real directories
        except NotADirectoryError:
            return False  # a file in the way: the backup will fail, saying so
        except OSError:
            return False  # unreadable to the gateway: the runner checks when it writes
        if stat.S_ISLNK(mode):
            return True
    return False


class CatalogApplication(EventStoreApplication):
    """The catalog event store, and the translation of its events into contracts."""

    name = "gateway_catalog"

    def register(self, *aggregates: Aggregate) -> list[Any]:
        """Save the registrations atomically; ``Conflict`` when a name claim collides."""
        events = [e for aggregate in aggregates for e in aggregate.collect_events()]
        try:
            self.save(*events)
        except IntegrityError:
            raise Conflict from None
        return events

    def claim(self, kind: str, scope: uuid.UUID, name: str, owner_id: uuid.UUID) -> NameClaim:
        claim_id = NameClaim.id_for(kind, scope, name)
        try:
            existing: NameClaim = self.repository.get(claim_id)
        except AggregateNotFoundError:
            return NameClaim(owner_id=owner_id, claim_id=claim_id)
        try:
            existing.reclaim(owner_id)
        except NameTaken:
            raise Conflict(kind) from None
        return existing

    def remove_destination(
        self, organization_id: uuid.UUID, destination_id: uuid.UUID, now: datetime
    ) -> list[Any]:
        try:
            destination: Destination = self.repository.get(destination_id)
        except AggregateNotFoundError:
            raise Gone from None
        if not isinstance(destination, Destination) or destination.organization_id != (
            organization_id
        ):
            raise Gone
        try:
            destination.remove(now)
        except CatalogError:
            raise Gone from None
        claims: list[NameClaim] = [
            self.repository.get(NameClaim.id_for("destination", organization_id, destination.name))
        ]
        if destination.type == "local":
            with contextlib.suppress(AggregateNotFoundError):  # registered before paths were
                claims.append(
                    self.repository.get(
                        NameClaim.id_for(LOCAL_PATH, organization_id, destination.config["path"])
                    )
                )
        for claim in claims:
            claim.release()
        return self.register(destination, *claims)

    def remove_webhook(
        self, organization_id: uuid.UUID, webhook_id: uuid.UUID, now: datetime
    ) -> list[Any]:
        """Record the webhook's removal; ``Gone`` when the organization has no such webhook
        (or it is removed, also by a concurrent request that saved first)."""
        try:
            webhook: Webhook = self.repository.get(webhook_id)
        except AggregateNotFoundError:
            raise Gone from None
        if not isinstance(webhook, Webhook) or webhook.organization_id != organization_id:
            raise Gone
        try:
            webhook.remove(now)
            return self.register(webhook)
        except (CatalogError, Conflict):
            raise Gone from None

    def to_envelope(self, event: Any) -> tuple[Topic, Envelope] | None:
        """The public contract message of a stored catalog event (claims stay private)."""
        message: Message
        environment_id: uuid.UUID | None = None
        if isinstance(event, Project.Registered):
            message = ProjectRegistered(
                project_id=event.originator_id,
                organization_id=event.organization_id,
                name=event.name,
                registered_at=event.registered_at,
            )
        elif isinstance(event, Environment.Registered):
            environment_id = event.originator_id
            message = EnvironmentRegistered(
                environment_id=event.originator_id,
                organization_id=event.organization_id,
                project_id=event.project_id,
                name=event.name,
                database=DatabaseTarget.model_validate(event.database),
                cluster=ClusterSpec.model_validate(event.cluster) if event.cluster else None,
                files_path=event.files_path,
                registered_at=event.registered_at,
            )
        elif isinstance(event, Destination.Registered):
            message = DestinationRegistered(
                destination_id=event.originator_id,
                organization_id=event.organization_id,
                name=event.name,
                type=event.type,
                config=DESTINATION_CONFIG.validate_python({"kind": event.type, **event.config}),
                is_default=event.is_default,
                registered_at=event.registered_at,
            )
        elif isinstance(event, Destination.Removed):
            message = DestinationRemoved(
                destination_id=event.originator_id,
                organization_id=event.organization_id,
                removed_at=event.removed_at,
            )
        elif isinstance(event, Webhook.Registered):
            message = WebhookRegistered(
                webhook_id=event.originator_id,
                organization_id=event.organization_id,
                url=event.url,
                signing_secret_ref=event.signing_secret_ref,
                kinds=list(event.kinds),
                registered_at=event.registered_at,
            )
        elif isinstance(event, Webhook.Removed):
            message = WebhookRemoved(
                webhook_id=event.originator_id,
                organization_id=event.organization_id,
                removed_at=event.removed_at,
            )
        else:
            return None
        return CATALOG_EVENTS, Envelope.wrap(
            message,
            producer=PRODUCER,
            organization_id=message.organization_id,
            environment_id=environment_id,
            message_id=stable_message_id(event.originator_id, event.originator_version),
            aggregate_id=event.originator_id,
            aggregate_version=event.originator_version,
            occurred_at=event.timestamp,
        )


class Gateway:
    """What the controllers call: one method per thing a client can ask for."""

    def __init__(
        self,
        catalog: CatalogApplication,
        catalog_view: ProjectionRunner,
        backups_view: ProjectionRunner,
        wake_relays: Callable[[], None],
        vault: SecretVault,
        *,
        schedules_view: ProjectionRunner,
        allow_operator_refs: bool = False,
        destination_root: Path | None = None,
        webhooks_view: ProjectionRunner | None = None,
        webhook_policy: WebhookPolicy | None = None,
    ) -> None:
        self.catalog = catalog
        self.catalog_view = catalog_view
        self.backups_view = backups_view
        self.schedules_view = schedules_view
        self._wake_relays = wake_relays
        self.vault = vault
        self.allow_operator_refs = allow_operator_refs
        self._destination_root = destination_root
        self.webhooks_view = webhooks_view
        # Without the operator's exceptions: https to public addresses only.
        self.webhook_policy = webhook_policy or WebhookPolicy()

    async def _recorded(self, events: Sequence[Any]) -> None:
        """Apply new catalog events to our view now, and have the relay publish them."""
        for event in events:
            mapped = self.catalog.to_envelope(event)
            if mapped is not None:
                await self.catalog_view.apply_now(mapped[1])
                if self.webhooks_view is not None:
                    await self.webhooks_view.apply_now(mapped[1])
        self._wake_relays()

    async def _register(
        self,
        registration: Aggregate,
        kind: str,
        scope: uuid.UUID,
        name: str | None,
        *,
        also: Sequence[tuple[str, uuid.UUID, str]] = (),
        undo: Callable[[], None] | None = None,
    ) -> uuid.UUID:
        """Record a registration with the claim on its name within ``scope`` (none when
        it has no ``name``: a webhook), and the claims ``also`` lists ((kind, scope, name)
        each), atomically; ``undo`` runs when (and only when) it could not be saved."""
        wanted = [(kind, scope, name)] if name is not None else []

        def record() -> list[Any]:
            try:
                claims = [
                    self.catalog.claim(k, s, n, registration.id) for k, s, n in [*wanted, *also]
                ]
                return self.catalog.register(registration, *claims)
            except BaseException:
                if undo is not None:
                    undo()
                raise

        await self._recorded(await asyncio.to_thread(record))
        return registration.id

    def _secret_names(self, refs: dict[str, str | None]) -> dict[str, str]:
        """The stored secrets that ``refs`` (field → reference) name, by name → field;
        ``Refused`` for a reference the organization may not use."""
        names: dict[str, str] = {}
        for field, ref in refs.items():
            if ref is None:
                continue
            name = secret_name(ref)
            if name is not None:
                names.setdefault(name, field)
            elif not self.allow_operator_refs:
                raise Refused(
                    field,
                    "env: and file: references are disabled by the operator; store the "
                    "credential with POST /api/v1/secrets and name it as secret:NAME",
                )
        return names

    async def _register_using_secrets(
        self,
        registration: Aggregate,
        kind: str,
        scope: uuid.UUID,
        name: str | None,
        organization_id: uuid.UUID,
        refs: dict[str, str | None],
        also: Sequence[tuple[str, uuid.UUID, str]] = (),
    ) -> uuid.UUID:
        """Register, having recorded the registration's use of the secrets it names (each
        must exist in the organization); a registration that could not be saved drops those
        uses again (one saved keeps them, whatever happens after: its view, a shutdown)."""
        names = self._secret_names(refs)
        if names:
            try:
                await asyncio.to_thread(
                    self.vault.add_uses, organization_id, list(names), kind, registration.id
                )
            except SecretNotFound as exc:
                raise Refused(names[exc.name], "names no secret of this organization") from None
        return await self._register(
            registration,
            kind,
            scope,
            name,
            also=also,
            undo=(lambda: self.vault.drop_uses(registration.id)) if names else None,
        )

    async def create_secret(self, organization_id: uuid.UUID, name: str, value: str) -> SecretInfo:
        return await asyncio.to_thread(self.vault.create, organization_id, name, value)

    async def replace_secret(self, organization_id: uuid.UUID, name: str, value: str) -> SecretInfo:
        return await asyncio.to_thread(self.vault.replace, organization_id, name, value)

    async def secret(self, organization_id: uuid.UUID, name: str) -> SecretInfo:
        return await asyncio.to_thread(self.vault.info, organization_id, name)

    async def list_secrets(
        self, organization_id: uuid.UUID, limit: int, offset: int
    ) -> tuple[list[SecretInfo], int]:
        return await asyncio.to_thread(self.vault.page, organization_id, limit, offset)

    async def delete_secret(self, organization_id: uuid.UUID, name: str) -> None:
        """Delete the secret; ``SecretInUse`` while a registered environment or destination
        names it (uses left by registrations that never got saved do not count). The catalog
        view is asked too, so a registration whose recorded use got lost still holds it."""
        registered = await self._registered_users(organization_id, f"secret:{name}")
        if registered:
            raise SecretInUse(registered)
        try:
            await asyncio.to_thread(self.vault.delete, organization_id, name)
            return
        except SecretInUse as exc:
            stale = [u for u in exc.users if await asyncio.to_thread(self._is_stale, u)]
            if len(stale) < len(exc.users):
                raise
            for use in stale:
                await asyncio.to_thread(self.vault.drop_uses, use.user_id)
        await asyncio.to_thread(self.vault.delete, organization_id, name)

    async def _registered_users(self, organization_id: uuid.UUID, ref: str) -> list[SecretUse]:
        schema = self.catalog_view.schema
        async with self.catalog_view.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    f"SELECT 'environment' AS kind, id FROM {schema}.environments "
                    "WHERE organization_id = %s AND database->>'passwordRef' = %s "
                    f"UNION ALL SELECT 'destination', id FROM {schema}.destinations "
                    "WHERE organization_id = %s "
                    "AND (config->>'accessKeyRef' = %s OR config->>'secretKeyRef' = %s)",
                    (organization_id, ref, organization_id, ref, ref),
                )
            ).fetchall()
        return [SecretUse(row["kind"], row["id"], 0.0) for row in rows]

    def _is_stale(self, use: SecretUse) -> bool:
        if use.age_seconds < STALE_USE_SECONDS:
            return False
        try:
            user: Aggregate = self.catalog.repository.get(use.user_id)
        except AggregateNotFoundError:
            return True
        return isinstance(user, Destination | Webhook) and user.removed

    async def register_project(self, organization_id: uuid.UUID, name: str) -> uuid.UUID:
        project = Project(
            project_id=uuid.uuid4(),
            organization_id=organization_id,
            name=name,
            registered_at=utc_now(),
        )
        return await self._register(project, "project", organization_id, name)

    async def register_environment(
        self,
        organization_id: uuid.UUID,
        project_id: uuid.UUID,
        name: str,
        database: dict[str, Any],
        cluster: dict[str, Any] | None,
        files_path: str | None,
    ) -> uuid.UUID:
        environment = Environment(
            environment_id=uuid.uuid4(),
            organization_id=organization_id,
            project_id=project_id,
            name=name,
            database=database,
            cluster=cluster,
            files_path=files_path,
            registered_at=utc_now(),
        )
        return await self._register_using_secrets(
            environment,
            "environment",
            project_id,
            name,
            organization_id,
            {"database.passwordRef": database.get("passwordRef")},
        )

    async def register_destination(
        self,
        organization_id: uuid.UUID,
        name: str,
        destination_type: DestinationType,
        config: dict[str, Any],
        is_default: bool,
    ) -> uuid.UUID:
        """Register a destination; ``Refused`` when a local one's directory is a link."""
        root = self._destination_root
        if (
            destination_type == "local"
            and root is not None
            and await asyncio.to_thread(link_below, root, organization_id, config["path"])
        ):
            raise Refused(
                "config.path",
                "leads through a symbolic link; a local destination must be a real "
                "directory inside the organization's directory",
            )
        destination = Destination(
            destination_id=uuid.uuid4(),
            organization_id=organization_id,
            name=name,
            type=destination_type,
            config=config,
            is_default=is_default,
            registered_at=utc_now(),
        )
        return await self._register_using_secrets(
            destination,
            "destination",
            organization_id,
            name,
            organization_id,
            {
                "config.accessKeyRef": config.get("accessKeyRef"),
                "config.secretKeyRef": config.get("secretKeyRef"),
            },
            # Two destinations writing one directory would take each other's files.
            also=[(LOCAL_PATH, organization_id, config["path"])]
            if destination_type == "local"
            else [],
        )

    async def remove_destination(
        self, organization_id: uuid.UUID, destination_id: uuid.UUID
    ) -> None:
        """Remove the destination; ``DestinationInUse`` while a schedule uses it or it holds
        backups that are not deleted (whatever their status: a failed backup may hold an
        upload, a pending one is about to).

        The check and the removal run under a lock of the destination's catalog row, which
        ``request_backup`` shares while it commits a backup into the destination: either
        the backup is committed first (and this answers 409), or the removal is (and the
        request finds the destination gone). Never a backup into a removed destination."""
        schema = self.catalog_view.schema
        async with self.catalog_view.pool.connection() as conn, conn.transaction():
            found = await (
                await conn.execute(
                    f"SELECT id FROM {schema}.destinations "
                    "WHERE organization_id = %s AND id = %s FOR UPDATE",
                    (organization_id, destination_id),
                )
            ).fetchone()
            if found is None:
                raise Gone
            if await self._schedules_using(conn, organization_id, destination_id):
                raise DestinationInUse("a schedule of the organization uses it")
            held = await (
                await conn.execute(
                    f"SELECT count(*) AS n FROM {SCHEMA}.backups "
                    "WHERE organization_id = %s AND status <> 'deleted' AND destinations @> %s",
                    (organization_id, Jsonb([{"destinationId": str(destination_id)}])),
                )
            ).fetchone()
            if held is not None and held["n"]:
                raise DestinationInUse(
                    f"it holds {held['n']} backup(s) that are not deleted; delete them first"
                )
            events = await asyncio.to_thread(
                self.catalog.remove_destination, organization_id, destination_id, utc_now()
            )
            for event in events:
                mapped = self.catalog.to_envelope(event)
                if mapped is not None:
                    await self.catalog_view.apply_now(mapped[1], conn)
        self._wake_relays()
        # Its credentials are free to be deleted now.
        await asyncio.to_thread(self.vault.drop_uses, destination_id)

    async def register_webhook(
        self, organization_id: uuid.UUID, url: str, signing_secret_ref: str, kinds: list[str]
    ) -> uuid.UUID:
        """Register a webhook; ``Refused`` for a URL the webhook policy does not allow (the
        reason, never the URL) or a signing secret the organization cannot use. The use
        of the secret is recorded, so it cannot be deleted while the webhook exists."""
        reason = self.webhook_policy.check_url(url)
        if reason is not None:
            raise Refused("url", reason)
        webhook = Webhook(
            webhook_id=uuid.uuid4(),
            organization_id=organization_id,
            url=url,
            signing_secret_ref=signing_secret_ref,
            kinds=kinds,
            registered_at=utc_now(),
        )
        return await self._register_using_secrets(
            webhook,
            "webhook",
            organization_id,
            None,
            organization_id,
            {"signingSecretRef": signing_secret_ref},
        )

    async def remove_webhook(self, organization_id: uuid.UUID, webhook_id: uuid.UUID) -> None:
        """Remove the webhook (``Gone`` when the organization has none of that id) and
        release its signing secret."""
        events = await asyncio.to_thread(
            self.catalog.remove_webhook, organization_id, webhook_id, utc_now()
        )
        await self._recorded(events)
        await asyncio.to_thread(self.vault.drop_uses, webhook_id)

    async def _schedules_using(
        self, conn: Any, organization_id: uuid.UUID, destination_id: uuid.UUID
    ) -> bool:
        """Whether a schedule of the organization stores backups in the destination, asked
        in the removal's transaction, after it locked the destination's row: a schedule's
        PUT holds that row ``FOR SHARE`` until it commits, so whichever commits first wins
        (a PUT that comes second finds the destination gone)."""
        found = await (
            await conn.execute(
                f"SELECT 1 FROM {self.schedules_view.schema}.schedules "
                "WHERE organization_id = %s AND settings->'destinationIds' @> %s LIMIT 1",
                (organization_id, Jsonb([str(destination_id)])),
            )
        ).fetchone()
        return found is not None

    async def delete_backup(
        self,
        *,
        organization_id: uuid.UUID,
        backup_id: uuid.UUID,
        requested_by: str,
        correlation_id: uuid.UUID | None,
    ) -> bool:
        """Issue a ``DeleteBackup``; False when the organization has no such backup.

        The row is locked while its status is checked and changed, so concurrent requests
        (on any gateway instance) see each other. ``BackupInProgress`` while pending or
        running. A ``deleting`` backup gets the command again (the runner records nothing
        new; it re-arms a removal that gave up); a ``deleted`` one gets nothing."""
        async with self.backups_view.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    f"SELECT status, environment_id FROM {SCHEMA}.backups "
                    "WHERE organization_id = %s AND id = %s FOR UPDATE",
                    (organization_id, backup_id),
                )
            ).fetchone()
            if row is None:
                return False
            status = row["status"]
            if status in ("pending", "running"):
                raise BackupInProgress(status)
            if status == "deleted":
                return True
            command = DeleteBackup(
                backup_id=backup_id,
                organization_id=organization_id,
                environment_id=row["environment_id"],
                requested_by=requested_by,
                requested_at=utc_now(),
            )
            if status != "deleting":
                # Readable at once as the runner's event will say; unversioned, so the
                # real one still applies.
                deleting = Envelope.wrap(
                    BackupDeletionRequested(
                        backup_id=backup_id,
                        environment_id=command.environment_id,
                        requested_by=requested_by,
                        requested_at=command.requested_at,
                    ),
                    producer=PRODUCER,
                    organization_id=organization_id,
                    environment_id=command.environment_id,
                    aggregate_id=backup_id,
                )
                await self.backups_view.apply_now(deleting, conn)
            await enqueue(
                conn,
                BACKUP_COMMANDS,
                Envelope.wrap(
                    command,
                    producer=PRODUCER,
                    organization_id=organization_id,
                    environment_id=command.environment_id,
                    aggregate_id=backup_id,
                    correlation_id=correlation_id or backup_id,
                ),
            )
        self._wake_relays()
        return True

    def backup_request(
        self,
        *,
        organization_id: uuid.UUID,
        requested_by: str,
        environment: DictRow,
        destinations: Sequence[DictRow],
        backup_type: BackupType,
        label: str | None,
        correlation_id: uuid.UUID | None,
    ) -> tuple[RequestBackup, Envelope, Envelope]:
        """A ``RequestBackup`` of ``environment``: the command, its envelope, and the
        ``BackupRequested`` its pending row is built from (by the projection's own rule,
        unversioned, so the runner's real event still applies)."""
        command = RequestBackup(
            backup_id=uuid.uuid4(),
            organization_id=organization_id,
            project_id=environment["project_id"],
            environment_id=environment["id"],
            type=backup_type,
            trigger="manual",
            label=label,
            requested_by=requested_by,
            requested_at=utc_now(),
            database=DatabaseTarget.model_validate(environment["database"]),
            destinations=[
                DestinationTarget.of(d["id"], d["name"], d["type"], d["config"])
                for d in destinations
            ],
        )
        envelope = Envelope.wrap(
            command,
            producer=PRODUCER,
            organization_id=organization_id,
            environment_id=command.environment_id,
            aggregate_id=command.backup_id,
            correlation_id=correlation_id or command.backup_id,
        )
        pending = Envelope.wrap(
            BackupRequested(
                backup_id=command.backup_id,
                organization_id=organization_id,
                project_id=command.project_id,
                environment_id=command.environment_id,
                type=command.type,
                trigger=command.trigger,
                label=command.label,
                requested_by=command.requested_by,
                requested_at=command.requested_at,
                destinations=[
                    DestinationRef(destination_id=d.destination_id, name=d.name, type=d.type)
                    for d in command.destinations
                ],
            ),
            producer=PRODUCER,
            organization_id=organization_id,
            environment_id=command.environment_id,
            aggregate_id=command.backup_id,
        )
        return command, envelope, pending

    async def enqueue_backup(
        self, conn: Any, command: RequestBackup, envelope: Envelope, pending: Envelope
    ) -> None:
        """The pending row and the command, in the caller's transaction."""
        # Shared with remove_destination's lock: no backup into a destination that is
        # being removed (DestinationGone, when the removal committed first).
        locked = await (
            await conn.execute(
                f"SELECT id FROM {self.catalog_view.schema}.destinations "
                "WHERE organization_id = %s AND id = ANY(%s) FOR SHARE",
                (command.organization_id, [d.destination_id for d in command.destinations]),
            )
        ).fetchall()
        if len(locked) < len({d.destination_id for d in command.destinations}):
            raise DestinationGone
        await self.backups_view.apply_now(pending, conn)
        await enqueue(conn, BACKUP_COMMANDS, envelope)

    async def request_backup(
        self,
        *,
        organization_id: uuid.UUID,
        requested_by: str,
        environment: DictRow,
        destinations: Sequence[DictRow],
        backup_type: BackupType,
        label: str | None,
        correlation_id: uuid.UUID | None,
    ) -> uuid.UUID:
        """Issue a ``RequestBackup``; the pending row and the command commit together."""
        command, envelope, pending = self.backup_request(
            organization_id=organization_id,
            requested_by=requested_by,
            environment=environment,
            destinations=destinations,
            backup_type=backup_type,
            label=label,
            correlation_id=correlation_id,
        )
        async with self.backups_view.pool.connection() as conn, conn.transaction():
            await self.enqueue_backup(conn, command, envelope, pending)
        self._wake_relays()
        return command.backup_id

    async def configure_schedule(
        self,
        *,
        organization_id: uuid.UUID,
        requested_by: str,
        environment: DictRow,
        settings: ScheduleSettings,
        correlation_id: uuid.UUID | None,
    ) -> ScheduleConfigured:
        """Create or replace the environment's schedule with ``settings`` (validated,
        effective): its next revision, its row and the ``ConfigureSchedule`` command commit
        together. ``UnknownDestinations`` when a destination is not the organization's.

        The named destinations' catalog rows are held ``FOR SHARE`` until the commit (a
        removal takes them ``FOR UPDATE`` and then looks for schedules that use them)."""
        environment_id: uuid.UUID = environment["id"]
        schedule_id = ids.schedule_id(environment_id)
        schema = self.schedules_view.schema
        async with self.schedules_view.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                advisory_key(SCHEDULE_LOCK_CLASS, str(environment_id)),
            )
            current = await (
                await conn.execute(
                    f"SELECT revision, created_at FROM {schema}.schedules "
                    "WHERE environment_id = %s FOR UPDATE",
                    (environment_id,),
                )
            ).fetchone()
            locked = await (
                await conn.execute(
                    f"SELECT id FROM {self.catalog_view.schema}.destinations "
                    "WHERE organization_id = %s AND id = ANY(%s) FOR SHARE",
                    (organization_id, list(settings.destination_ids)),
                )
            ).fetchall()
            known = {row["id"] for row in locked}
            unknown = [i for i, d in enumerate(settings.destination_ids) if d not in known]
            if unknown:
                raise UnknownDestinations(unknown)
            now = utc_now()
            command = ConfigureSchedule(
                schedule_id=schedule_id,
                organization_id=organization_id,
                project_id=environment["project_id"],
                environment_id=environment_id,
                revision=current["revision"] + 1 if current else 1,
                settings=settings,
                requested_by=requested_by,
                created_at=current["created_at"] if current else now,
                updated_at=now,
            )
            # The row as the scheduler's event of this revision will say: built by the
            # projection's own rule, unversioned, so that event still applies.
            configured = ScheduleConfigured.model_validate(command.model_dump())
            await self.schedules_view.apply_now(
                Envelope.wrap(
                    configured,
                    producer=PRODUCER,
                    organization_id=organization_id,
                    environment_id=environment_id,
                    aggregate_id=schedule_id,
                ),
                conn,
            )
            await enqueue(
                conn,
                SCHEDULE_COMMANDS,
                Envelope.wrap(
                    command,
                    producer=PRODUCER,
                    organization_id=organization_id,
                    environment_id=environment_id,
                    aggregate_id=schedule_id,
                    correlation_id=correlation_id,
                ),
            )
        self._wake_relays()
        return configured
