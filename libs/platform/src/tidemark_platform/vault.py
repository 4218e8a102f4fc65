"""Stored secrets: an organization's credentials, encrypted at rest, never in an event.

A secret is a value an organization stores under a name (``POST /api/v1/secrets``) and
names elsewhere as ``secret:NAME``. It is deliberately *not* event-sourced: events are
kept forever and travel through Kafka, while a credential must be replaceable and
destroyable. The gateway writes secrets; the runners read them, by (organization, name)
only, so one organization's reference never reaches another's value.

Values are sealed with AES-256-GCM (``cryptography``) under keys the operator provides in
``TIDEMARK_SECRETS_KEYS``: ``id:base64key[,id:base64key...]``, the first one seals, every
one listed opens. Rotation: put a new key first, keep the old ones, run ``python -m
tidemark_platform.vault rotate`` (``make rotate-secret-keys``) to re-seal every value under
the new key, then drop the old keys. The organization and name are the cipher's associated
data: a sealed value copied onto another row (another organization's) does not open.

Which environments and destinations name a secret is kept beside it (``secrets.uses``,
a foreign key): a secret in use cannot be deleted, and a reference to a secret that does
not exist cannot be recorded.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import Connection, errors
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from tidemark_platform.database import creating_tables

SCHEMA = "secrets"
SECRET_PREFIX = "secret:"  # noqa: S105 (a reference prefix, not a secret)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
NONCE_BYTES = 12
# The referrers a secret can have; recorded with each use.
USE_KINDS = ("environment", "destination", "webhook")

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.values (
    organization_id uuid NOT NULL,
    name text NOT NULL,
    key_id text NOT NULL,
    sealed bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, name)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.uses (
    organization_id uuid NOT NULL,
    name text NOT NULL,
    user_kind text NOT NULL,
    user_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, name, user_id),
    FOREIGN KEY (organization_id, name) REFERENCES {SCHEMA}.values ON DELETE RESTRICT
);
CREATE INDEX IF NOT EXISTS uses_by_user ON {SCHEMA}.uses (user_id);
"""


class VaultError(Exception):
    """A secret operation that cannot be done; messages never hold a value."""


class KeyRingError(VaultError):
    pass


class SecretNotFound(VaultError):
    def __init__(self, name: str) -> None:
        super().__init__("no secret of that name in this organization")
        self.name = name


class SecretExists(VaultError):
    pass


@dataclass(frozen=True)
class SecretUse:
    kind: str  # one of USE_KINDS
    user_id: uuid.UUID
    age_seconds: float  # since the use was recorded


class SecretInUse(VaultError):
    def __init__(self, users: list[SecretUse]) -> None:
        super().__init__("the secret is in use")
        self.users = users


class SecretUnreadable(VaultError):
    """The stored value does not open with the configured keys (a key was removed, or the
    row was tampered with)."""


def is_secret_ref(ref: str) -> bool:
    return ref.startswith(SECRET_PREFIX)


def secret_name(ref: str) -> str | None:
    """The name in a ``secret:NAME`` reference, or None when it is not a valid one."""
    if not ref.startswith(SECRET_PREFIX):
        return None
    name = ref[len(SECRET_PREFIX) :]
    return name if _NAME.fullmatch(name) else None


class KeyRing:
    """The operator's keys: the first seals, all open."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyRingError("no secret keys configured (set TIDEMARK_SECRETS_KEYS)")
        ids = [key_id for key_id, _ in keys]
        if len(set(ids)) != len(ids):
            raise KeyRingError("TIDEMARK_SECRETS_KEYS lists a key id twice")
        self.active_id = ids[0]
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """``id:base64key[,id:base64key...]``, each key 32 bytes (AES-256)."""
        keys = []
        for position, item in enumerate(part.strip() for part in text.split(",") if part.strip()):
            key_id, sep, encoded = item.partition(":")
            if not sep or not _KEY_ID.fullmatch(key_id):
                raise KeyRingError(
                    f"TIDEMARK_SECRETS_KEYS entry {position + 1}: expected id:base64key "
                    "(id of letters, digits, '_', '.', '-')"
                )
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"TIDEMARK_SECRETS_KEYS key {key_id!r} is not base64") from None
            if len(key) != 32:
                raise KeyRingError(
                    f"TIDEMARK_SECRETS_KEYS key {key_id!r} must be 32 bytes (AES-256), "
                    f"not {len(key)}"
                )
            keys.append((key_id, key))
        return cls(keys)

    @staticmethod
    def generate(key_id: str) -> str:
        """A new keyring entry, ``id:base64key``, from the OS's random source."""
        return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"

    @staticmethod
    def _context(organization_id: uuid.UUID, name: str) -> bytes:
        return f"tidemark-secret:v1:{organization_id}:{name}".encode()

    def seal(self, organization_id: uuid.UUID, name: str, value: str) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        cipher = self._ciphers[self.active_id]
        sealed = cipher.encrypt(nonce, value.encode(), self._context(organization_id, name))
        return self.active_id, nonce + sealed

    def open(self, organization_id: uuid.UUID, name: str, key_id: str, sealed: bytes) -> str:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SecretUnreadable(
                f"the secret is sealed with key {key_id!r}, which is not configured"
            )
        try:
            plain = cipher.decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], self._context(organization_id, name)
            )
        except InvalidTag:
            raise SecretUnreadable("the stored secret does not open (damaged or moved)") from None
        return plain.decode()


@dataclass(frozen=True)
class SecretInfo:
    name: str
    created_at: datetime
    updated_at: datetime


def migrate(database_url: str) -> None:
    with creating_tables(database_url, SCHEMA), psycopg.connect(database_url) as conn:
        conn.execute(DDL)


class SecretVault:
    """The secrets table, through a small pool of its own (blocking calls: run them in a
    thread from async code)."""

    def __init__(self, database_url: str, keys: KeyRing, *, max_size: int = 4) -> None:
        self.database_url = database_url
        self.keys = keys
        self._pool: ConnectionPool[Connection[DictRow]] = ConnectionPool(
            database_url,
            open=False,
            min_size=1,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "connect_timeout": 10},
            connection_class=Connection,
        )

    def open(self) -> None:
        migrate(self.database_url)
        self._pool.open(wait=True, timeout=30)

    def close(self) -> None:
        self._pool.close()

    def create(self, organization_id: uuid.UUID, name: str, value: str) -> SecretInfo:
        key_id, sealed = self.keys.seal(organization_id, name, value)
        with self._pool.connection() as conn:
            try:
                row = conn.execute(
                    f"INSERT INTO {SCHEMA}.values (organization_id, name, key_id, sealed) "
                    "VALUES (%s, %s, %s, %s) RETURNING name, created_at, updated_at",
                    (organization_id, name, key_id, sealed),
                ).fetchone()
            except errors.UniqueViolation:
                raise SecretExists("a secret of that name exists") from None
        assert row is not None
        return SecretInfo(**row)

    def replace(self, organization_id: uuid.UUID, name: str, value: str) -> SecretInfo:
        key_id, sealed = self.keys.seal(organization_id, name, value)
        with self._pool.connection() as conn:
            row = conn.execute(
                f"UPDATE {SCHEMA}.values SET key_id = %s, sealed = %s, updated_at = now() "
                "WHERE organization_id = %s AND name = %s "
                "RETURNING name, created_at, updated_at",
                (key_id, sealed, organization_id, name),
            ).fetchone()
        if row is None:
            raise SecretNotFound(name)
        return SecretInfo(**row)

    def delete(self, organization_id: uuid.UUID, name: str) -> None:
        """Delete the secret; ``SecretInUse`` (naming its users) while anything uses it."""
        with self._pool.connection() as conn:
            try:
                deleted = conn.execute(
                    f"DELETE FROM {SCHEMA}.values WHERE organization_id = %s AND name = %s",
                    (organization_id, name),
                ).rowcount
            except errors.ForeignKeyViolation:
                conn.rollback()
                raise SecretInUse(self._users(conn, organization_id, name)) from None
        if not deleted:
            raise SecretNotFound(name)

    def users(self, organization_id: uuid.UUID, name: str) -> list[SecretUse]:
        with self._pool.connection() as conn:
            return self._users(conn, organization_id, name)

    @staticmethod
    def _users(conn: Connection[DictRow], organization_id: uuid.UUID, name: str) -> list[SecretUse]:
        rows = conn.execute(
            "SELECT user_kind, user_id, extract(epoch FROM now() - created_at) AS age "
            f"FROM {SCHEMA}.uses WHERE organization_id = %s AND name = %s "
            "ORDER BY created_at, user_id",
            (organization_id, name),
        ).fetchall()
        return [SecretUse(row["user_kind"], row["user_id"], float(row["age"])) for row in rows]

    def page(
        self, organization_id: uuid.UUID, limit: int, offset: int
    ) -> tuple[list[SecretInfo], int]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT name, created_at, updated_at FROM {SCHEMA}.values "
                "WHERE organization_id = %s ORDER BY name LIMIT %s OFFSET %s",
                (organization_id, limit, offset),
            ).fetchall()
            total = conn.execute(
                f"SELECT count(*) AS n FROM {SCHEMA}.values WHERE organization_id = %s",
                (organization_id,),
            ).fetchone()
        assert total is not None
        return [SecretInfo(**row) for row in rows], int(total["n"])

    def _row(self, organization_id: uuid.UUID, name: str, columns: str) -> DictRow:
        with self._pool.connection() as conn:
            row = conn.execute(
                f"SELECT {columns} FROM {SCHEMA}.values WHERE organization_id = %s AND name = %s",
                (organization_id, name),
            ).fetchone()
        if row is None:
            raise SecretNotFound(name)
        return row

    def info(self, organization_id: uuid.UUID, name: str) -> SecretInfo:
        return SecretInfo(**self._row(organization_id, name, "name, created_at, updated_at"))

    def reveal(self, organization_id: uuid.UUID, name: str) -> str:
        """The value of the organization's secret ``name``; nobody else's, by construction."""
        row = self._row(organization_id, name, "key_id, sealed")
        return self.keys.open(organization_id, name, row["key_id"], bytes(row["sealed"]))

    def add_uses(
        self, organization_id: uuid.UUID, names: Iterable[str], kind: str, user_id: uuid.UUID
    ) -> None:
        """Record that ``user_id`` names these secrets; ``SecretNotFound`` (and nothing
        recorded) when one of them does not exist in the organization."""
        assert kind in USE_KINDS
        with self._pool.connection() as conn, conn.transaction():
            for name in sorted(set(names)):
                try:
                    with conn.transaction():
                        conn.execute(
                            f"INSERT INTO {SCHEMA}.uses "
                            "(organization_id, name, user_kind, user_id) VALUES (%s, %s, %s, %s) "
                            "ON CONFLICT DO NOTHING",
                            (organization_id, name, kind, user_id),
                        )
                except errors.ForeignKeyViolation:
                    raise SecretNotFound(name) from None

    def drop_uses(self, user_id: uuid.UUID) -> None:
        with self._pool.connection() as conn:
            conn.execute(f"DELETE FROM {SCHEMA}.uses WHERE user_id = %s", (user_id,))

    def rotate(self, batch: int = 500) -> tuple[int, int]:
        """Re-seal every value not sealed with the active key. Returns (re-sealed, left):
        ``left`` counts values no configured key opens (they stay as they are, and the old
        key must not be dropped while any is left)."""
        done = left = 0
        after: tuple[uuid.UUID, str] = (uuid.UUID(int=0), "")  # before every row
        while True:
            with self._pool.connection() as conn, conn.transaction():
                rows = conn.execute(
                    f"SELECT organization_id, name, key_id, sealed FROM {SCHEMA}.values "
                    "WHERE key_id <> %s AND (organization_id, name) > (%s, %s) "
                    "ORDER BY organization_id, name LIMIT %s FOR UPDATE",
                    (self.keys.active_id, *after, batch),
                ).fetchall()
                for row in rows:
                    organization_id, name = row["organization_id"], row["name"]
                    try:
                        value = self.keys.open(
                            organization_id, name, row["key_id"], bytes(row["sealed"])
                        )
                    except SecretUnreadable:
                        left += 1
                        continue
                    key_id, sealed = self.keys.seal(organization_id, name, value)
                    conn.execute(
                        f"UPDATE {SCHEMA}.values SET key_id = %s, sealed = %s "
                        "WHERE organization_id = %s AND name = %s",
                        (key_id, sealed, organization_id, name),
                    )
                    done += 1
            if len(rows) < batch:
                return done, left
            after = (rows[-1]["organization_id"], rows[-1]["name"])


def keyring_from_environment(environ: dict[str, str] | None = None) -> KeyRing:
    environ = dict(os.environ) if environ is None else environ
    return KeyRing.parse(environ.get("TIDEMARK_SECRETS_KEYS", ""))


def _cli(argv: list[str]) -> int:
    """``rotate``: re-seal every stored secret under the first configured key.
    ``generate-key ID``: print a new keyring entry."""
    if argv[:1] == ["generate-key"] and len(argv) == 2:
        print(KeyRing.generate(argv[1]))
        return 0
    if argv != ["rotate"]:
        print("usage: python -m tidemark_platform.vault rotate | generate-key ID", file=sys.stderr)
        return 2
    url = os.environ.get("DATABASE_URL") or os.environ.get("TIDEMARK_DATABASE_URL")
    if not url:
        print("set DATABASE_URL", file=sys.stderr)
        return 2
    vault = SecretVault(url, keyring_from_environment())
    vault.open()
    try:
        done, left = vault.rotate()
    finally:
        vault.close()
    print(f"re-sealed {done} secret(s) under key {vault.keys.active_id!r}")
    if left:
        print(
            f"{left} secret(s) open with no configured key and were left as they are: "
            "keep the keys they were sealed with",
            file=sys.stderr,
        )
        return 1
    return 0


def _iter_names(refs: Iterable[str | None]) -> Iterator[str]:
    for ref in refs:
        if ref is not None:
            name = secret_name(ref)
            if name is not None:
                yield name


def names_in(refs: Iterable[str | None]) -> list[str]:
    """The secret names among credential references (other kinds are skipped)."""
    return sorted(set(_iter_names(refs)))


if __name__ == "__main__":
    raise SystemExit(_cli(sys.argv[1:]))
