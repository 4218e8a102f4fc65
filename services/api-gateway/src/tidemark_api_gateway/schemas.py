"""The HTTP API's request and response bodies (camelCase on the wire, see API.md)."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from tidemark_contracts import UtcDatetime
from tidemark_contracts.backup import BackupStatus, BackupTrigger, BackupType

# PostgreSQL cannot store U+0000 (text or jsonb), and no name, host or path of ours needs a
# control character: strings that reach the catalog refuse them (CONTROL) up front, before
# anything is recorded. The patterns are served in the OpenAPI document, so they are read
# alike by JSON Schema (ECMA) and Python: no ``\s`` (the two disagree on U+0085, U+FEFF).
CONTROL = r"\x00-\x1f\x7f-\x9f"
SPACE = r" \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
PRINTABLE = rf"^[^{CONTROL}]*$"
ABSOLUTE_PATH = rf"^/[^{CONTROL}]*$"
CREDENTIAL_REF = re.compile(rf"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/[^{SPACE}{CONTROL}]+)$")
NAME = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=rf"^[^{SPACE}{CONTROL}]([^{CONTROL}]*[^{SPACE}{CONTROL}])?$",
        examples=["shop production"],
    ),
]


def json_number(value: Any) -> Any:
    """A number must be sent as one: pydantic's lax mode would take ``"5432"`` or ``true``."""
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number")
    return value


def json_boolean(value: Any) -> Any:
    """``true`` or ``false`` only (not 0, 1 or "yes"). Not StrictBool: Litestar validates
    with ``strict=False``, which overrides a field's own strictness."""
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


PORT = Annotated[int, Field(ge=1, le=65535), BeforeValidator(json_number)]
BOOLEAN = Annotated[bool, BeforeValidator(json_boolean)]


class RequestBody(BaseModel):
    """Unknown fields are refused: a typo must not silently become a default."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="forbid")


class ResponseBody(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def check_credential_ref(value: str) -> str:
    if not CREDENTIAL_REF.match(value):
        raise ValueError(
            "must be a credential reference, env:NAME or file:/path; plain secrets are refused"
        )
    return value


# The validator's own message (a pattern error would be less clear), the pattern in the schema.
CredentialRef = Annotated[
    str,
    AfterValidator(check_credential_ref),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": CREDENTIAL_REF.pattern,
            "description": "a credential reference, env:NAME or file:/path, never the secret",
        }
    ),
]


# --- projects -------------------------------------------------------------------------


class CreateProject(RequestBody):
    name: NAME


class ProjectOut(ResponseBody):
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    created_at: UtcDatetime


# --- environments ---------------------------------------------------------------------


class DatabaseIn(RequestBody):
    # A TCP host: a Unix-socket directory would reach the runner's own local servers.
    host: Annotated[str, Field(min_length=1, max_length=255, pattern=rf"^[^/@{SPACE}{CONTROL}]+$")]
    port: PORT = 5432
    dbname: Annotated[str, Field(min_length=1, max_length=63, pattern=PRINTABLE)]
    user: Annotated[str, Field(min_length=1, max_length=63, pattern=PRINTABLE)]
    password_ref: CredentialRef | None = None


class ClusterIn(RequestBody):
    data_directory: Annotated[str, Field(pattern=ABSOLUTE_PATH)]
    bin_directory: Annotated[str, Field(pattern=ABSOLUTE_PATH)]
    port: PORT


class CreateEnvironment(RequestBody):
    name: NAME
    database: DatabaseIn
    cluster: ClusterIn | None = None
    files_path: Annotated[str, Field(pattern=ABSOLUTE_PATH)] | None = None


class DatabaseOut(ResponseBody):
    host: str
    port: int
    dbname: str
    user: str
    password_ref: str | None = None


class ClusterOut(ResponseBody):
    data_directory: str
    bin_directory: str
    port: int


class EnvironmentOut(ResponseBody):
    id: uuid.UUID
    project_id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    database: DatabaseOut
    cluster: ClusterOut | None
    files_path: str | None
    created_at: UtcDatetime


# --- destinations ---------------------------------------------------------------------


class LocalConfigIn(RequestBody):
    path: Annotated[str, Field(pattern=ABSOLUTE_PATH, description="absolute directory path")]


class S3ConfigIn(RequestBody):
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=PRINTABLE)]
    prefix: Annotated[str, Field(max_length=1024, pattern=PRINTABLE)] = ""
    endpoint_url: Annotated[str, Field(max_length=2048, pattern=PRINTABLE)] | None = None
    region: Annotated[str, Field(max_length=64, pattern=PRINTABLE)] | None = None
    access_key_ref: CredentialRef | None = None
    secret_key_ref: CredentialRef | None = None


class CreateLocalDestination(RequestBody):
    name: NAME
    type: Literal["local"]
    config: LocalConfigIn
    is_default: BOOLEAN = False


class CreateS3Destination(RequestBody):
    name: NAME
    type: Literal["s3"]
    config: S3ConfigIn
    is_default: BOOLEAN = False


class CreateDestination(
    RootModel[Annotated[CreateLocalDestination | CreateS3Destination, Field(discriminator="type")]]
):
    """A destination to register: ``type`` selects the shape of ``config``."""


class DestinationOut(ResponseBody):
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    type: Literal["local", "s3"]
    config: dict[str, Any]
    is_default: bool
    created_at: UtcDatetime


# --- backups --------------------------------------------------------------------------


class CreateBackup(RequestBody):
    type: BackupType
    label: Annotated[str, Field(max_length=200, pattern=PRINTABLE)] | None = None
    destination_ids: Annotated[list[uuid.UUID], Field(min_length=1, max_length=10)] | None = None


class BackupDestinationOut(ResponseBody):
    destination_id: uuid.UUID
    name: str
    type: str
    status: Literal["pending", "uploaded", "failed", "deleted"]
    location: str | None = None
    size_bytes: int | None = None
    uploaded_at: UtcDatetime | None = None


class EnvironmentRef(ResponseBody):
    id: uuid.UUID
    name: str


class BackupOut(ResponseBody):
    id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID
    environment_id: uuid.UUID
    type: BackupType
    trigger: BackupTrigger
    label: str | None
    status: BackupStatus
    size_bytes: int | None
    checksum: str | None
    compression: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    completed_at: UtcDatetime | None
    duration_ms: int | None
    error: str | None
    destinations: list[BackupDestinationOut]
    wal_start_lsn: str | None = None
    wal_end_lsn: str | None = None
    environment: EnvironmentRef | None = Field(default=None, exclude_if=lambda v: v is None)


T = TypeVar("T")


class Page(ResponseBody, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
