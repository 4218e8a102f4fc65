"""Stored secrets: sealed at rest, opened only for their organization, rotated, in use."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from tidemark_platform.settings import SecretSettings
from tidemark_platform.vault import (
    KeyRing,
    KeyRingError,
    SecretExists,
    SecretInUse,
    SecretNotFound,
    SecretUnreadable,
    SecretVault,
    names_in,
    secret_name,
)

ORG_A = uuid.uuid4()
ORG_B = uuid.uuid4()


def test_a_sealed_value_opens_only_for_its_organization_and_name() -> None:
    keys = KeyRing.parse(KeyRing.generate("k1"))
    key_id, sealed = keys.seal(ORG_A, "db", "hunter2-value")
    assert b"hunter2-value" not in sealed
    assert keys.open(ORG_A, "db", key_id, sealed) == "hunter2-value"
    with pytest.raises(SecretUnreadable):
        keys.open(ORG_B, "db", key_id, sealed)  # copied onto another organization's row
    with pytest.raises(SecretUnreadable):
        keys.open(ORG_A, "other", key_id, sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecretUnreadable):
        keys.open(ORG_A, "db", key_id, tampered)
    # Two seals of one value differ (a fresh nonce each time).
    assert keys.seal(ORG_A, "db", "hunter2-value")[1] != sealed


def test_the_first_key_seals_and_every_listed_key_opens() -> None:
    old, new = KeyRing.generate("old"), KeyRing.generate("new")
    before = KeyRing.parse(old)
    key_id, sealed = before.seal(ORG_A, "db", "v")
    after = KeyRing.parse(f"{new},{old}")
    assert after.active_id == "new"
    assert after.open(ORG_A, "db", key_id, sealed) == "v"
    with pytest.raises(SecretUnreadable, match="not configured"):
        KeyRing.parse(new).open(ORG_A, "db", key_id, sealed)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no-colon",
        "k1:not base64!",
        f"k1:{base64.b64encode(b'short').decode()}",
        f"bad id:{base64.b64encode(bytes(32)).decode()}",
        f"{KeyRing.generate('k1')},{KeyRing.generate('k1')}",
    ],
)
def test_a_bad_keyring_is_refused_without_showing_key_material(text: str) -> None:
    with pytest.raises(KeyRingError) as raised:
        KeyRing.parse(text)
    for part in text.split(","):
        material = part.partition(":")[2]
        if len(material) > 8:
            assert material not in str(raised.value)


def test_references_name_secrets_by_a_strict_name() -> None:
    assert secret_name("secret:db-password.v2") == "db-password.v2"
    for ref in ["secret:", "secret:../x", "secret:a/b", "secret:-x", "env:X", "secret:a b"]:
        assert secret_name(ref) is None
    assert names_in(["secret:b", None, "env:X", "secret:a", "secret:b"]) == ["a", "b"]


@pytest.fixture
def vault(create_database: Callable[..., str]) -> Iterator[SecretVault]:
    store = SecretVault(create_database("vault"), KeyRing.parse(KeyRing.generate("k1")))
    store.open()
    yield store
    store.close()


@pytest.mark.integration
def test_secrets_are_per_organization_and_sealed_in_the_table(vault: SecretVault) -> None:
    created = vault.create(ORG_A, "db", "value-of-a")
    assert created.name == "db"
    vault.create(ORG_B, "db", "value-of-b")
    with pytest.raises(SecretExists):
        vault.create(ORG_A, "db", "again")
    assert vault.reveal(ORG_A, "db") == "value-of-a"
    assert vault.reveal(ORG_B, "db") == "value-of-b"
    with pytest.raises(SecretNotFound):
        vault.reveal(uuid.uuid4(), "db")
    replaced = vault.replace(ORG_A, "db", "new-value-of-a")
    assert replaced.updated_at >= created.updated_at
    assert vault.reveal(ORG_A, "db") == "new-value-of-a"
    with pytest.raises(SecretNotFound):
        vault.replace(ORG_A, "missing", "x")
    items, total = vault.page(ORG_A, 10, 0)
    assert (total, [i.name for i in items]) == (1, ["db"])
    with psycopg.connect(vault.database_url) as conn:
        raw = b"".join(
            bytes(r[0]) + r[1].encode()
            for r in conn.execute("SELECT sealed, name FROM secrets.values")
        )
        assert b"value-of-a" not in raw
        assert b"value-of-b" not in raw
        # Moving A's sealed value onto B's row does not give B A's value.
        conn.execute(
            "UPDATE secrets.values SET sealed = (SELECT sealed FROM secrets.values "
            "WHERE organization_id = %s) WHERE organization_id = %s",
            (ORG_A, ORG_B),
        )
    with pytest.raises(SecretUnreadable):
        vault.reveal(ORG_B, "db")


@pytest.mark.integration
def test_a_secret_in_use_cannot_be_deleted_and_a_use_needs_the_secret(
    vault: SecretVault,
) -> None:
    environment = uuid.uuid4()
    vault.create(ORG_A, "db", "v")
    vault.create(ORG_A, "s3", "v")
    with pytest.raises(SecretNotFound) as missing:
        vault.add_uses(ORG_A, ["db", "nope"], "environment", environment)
    assert missing.value.name == "nope"
    assert vault.users(ORG_A, "db") == [], "nothing recorded when one name is missing"
    # Another organization's secret of the same name is not a use of ours.
    vault.create(ORG_B, "only-b", "v")
    with pytest.raises(SecretNotFound):
        vault.add_uses(ORG_A, ["only-b"], "environment", environment)
    vault.add_uses(ORG_A, ["db", "s3"], "environment", environment)
    vault.add_uses(ORG_A, ["db"], "environment", environment)  # idempotent
    with pytest.raises(SecretInUse) as in_use:
        vault.delete(ORG_A, "db")
    assert [(u.kind, u.user_id) for u in in_use.value.users] == [("environment", environment)]
    assert vault.reveal(ORG_A, "db") == "v", "a refused delete deletes nothing"
    vault.drop_uses(environment)
    vault.delete(ORG_A, "db")
    with pytest.raises(SecretNotFound):
        vault.delete(ORG_A, "db")


@pytest.mark.integration
def test_rotation_reseals_every_value_under_the_new_key(
    create_database: Callable[..., str],
) -> None:
    url = create_database("rotate")
    old, new = KeyRing.generate("old"), KeyRing.generate("new")
    before = SecretVault(url, KeyRing.parse(old))
    before.open()
    try:
        for n in range(7):
            before.create(ORG_A, f"s{n}", f"value-{n}")
    finally:
        before.close()
    after = SecretVault(url, KeyRing.parse(f"{new},{old}"))
    after.open()
    try:
        assert after.rotate(batch=3) == (7, 0)
        assert after.rotate() == (0, 0)
    finally:
        after.close()
    only_new = SecretVault(url, KeyRing.parse(new))
    only_new.open()
    try:
        assert [only_new.reveal(ORG_A, f"s{n}") for n in range(7)] == [
            f"value-{n}" for n in range(7)
        ]
    finally:
        only_new.close()
    # A value no configured key opens is counted and left; the rest are still re-sealed.
    stray = SecretVault(url, KeyRing.parse(KeyRing.generate("stray")))
    stray.open()
    try:
        stray.create(ORG_B, "sealed-elsewhere", "x")
    finally:
        stray.close()
    again = SecretVault(url, KeyRing.parse(f"{KeyRing.generate('newer')},{new}"))
    again.open()
    try:
        assert again.rotate(batch=2) == (7, 1)
    finally:
        again.close()


def test_a_service_without_sealing_keys_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEMARK_SECRETS_KEYS", raising=False)
    with pytest.raises(SystemExit, match="TIDEMARK_SECRETS_KEYS is not set"):
        SecretSettings().keyring()
    monkeypatch.setenv("TIDEMARK_SECRETS_KEYS", KeyRing.generate("k9"))
    assert SecretSettings().keyring().active_id == "k9"
