"""The HTTP API's request and response bodies (camelCase on the wire, see API.md)."""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from tidemark_contracts import UtcDatetime
from tidemark_contracts.alert import ALERT_KINDS, AlertKind, AlertSeverity, DeliveryStatus
from tidemark_contracts.backup import (
    LOCAL_NAME_MAX_BYTES,
    LOCAL_PATH_MAX_BYTES,
    BackupStatus,
    BackupTrigger,
    BackupType,
    local_path_problem,
)
from tidemark_contracts.connection import HOST_PATTERN, NAME_PATTERN, host_problem, name_problem
from tidemark_platform.webhook_policy import MAX_URL_LENGTH

# PostgreSQL cannot store U+0000 (text or jsonb), and no name, host or path of ours needs a
# control character: strings that reach the catalog refuse them (CONTROL) up front, before
# anything is recorded. The patterns are served in the OpenAPI document, so they are read
# alike by JSON Schema (ECMA) and Python: no ``\s`` (the two disagree on U+0085, U+FEFF).
CONTROL = r"\x00-\x1f\x7f-\x9f"
SPACE = r" \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
PRINTABLE = rf"^[^{CONTROL}]*$"
ABSOLUTE_PATH = rf"^/[^{CONTROL}]*$"
SECRET_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"  # noqa: S105 (a pattern)
SECRET_REF = rf"^secret:{SECRET_NAME}$"
CREDENTIAL_REF = re.compile(
    rf"^(secret:{SECRET_NAME}|env:[A-Za-z_][A-Za-z0-9_]*|file:/[^{SPACE}{CONTROL}]+)$"
)
NAME = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=rf"^[^{SPACE}{CONTROL}]([^{CONTROL}]*[^{SPACE}{CONTROL}])?$",
        examples=["shop production"],
    ),
]


# A local destination's path as a pattern (what ``local_path_problem`` accepts, a little
# stricter so it can be said in characters): names of at most 63 characters (255 bytes in
# UTF-8 at most) separated by '/', none of them '.' or '..', no backslash or control
# character; at most 256 characters (1024 bytes).
LOCAL_NAME_MAX_CHARS = 63
LOCAL_PATH_MAX_CHARS = 256
_LOCAL_NAME = rf"(?!\.\.?(?:/|$))[^/\\{CONTROL}]{{1,{LOCAL_NAME_MAX_CHARS}}}"
LOCAL_PATH = rf"^{_LOCAL_NAME}(?:/{_LOCAL_NAME})*$"
assert LOCAL_PATH_MAX_CHARS * 4 <= LOCAL_PATH_MAX_BYTES
assert LOCAL_NAME_MAX_CHARS * 4 <= LOCAL_NAME_MAX_BYTES


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


# For the few patterns that need look-ahead (JSON Schema's ECMA dialect has it, pydantic's
# Rust engine does not). Python's ``$`` also matches before a final newline, so a model
# using it checks each such field without patterns too (a before-validator that refuses
# control characters).
LOOKAHEAD = ConfigDict(
    alias_generator=to_camel, populate_by_name=False, extra="forbid", regex_engine="python-re"
)


class ResponseBody(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def check_credential_ref(value: str) -> str:
    if not CREDENTIAL_REF.fullmatch(value):
        raise ValueError(
            "must be a credential reference, secret:NAME (env:NAME and file:/path when the "
            "operator enables them); plain secrets are refused"
        )
    return value


# The validator's own message (a pattern error would be less clear), the pattern in the
# schema. The schema shows ``secret:NAME`` only: env: and file: are the operator's, refused
# (422) unless TIDEMARK_ALLOW_OPERATOR_SECRET_REFS is set.
CredentialRef = Annotated[
    str,
    Field(max_length=300),
    AfterValidator(check_credential_ref),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 300,
            "pattern": SECRET_REF,
            "description": "secret:NAME, a secret the organization stored through "
            "/api/v1/secrets, never the secret itself (env:NAME and file:/path only where "
            "the operator enables them)",
            "examples": ["secret:db-password"],
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


def _refused_by(check: Callable[[str], str | None]) -> Callable[[Any], Any]:
    """A validator run before the field's pattern, so a refusal says why."""

    def validate(value: Any) -> Any:
        reason = check(value) if isinstance(value, str) else None
        if reason is not None:
            raise ValueError(reason)  # the reason, never the value (it may be an attack)
        return value

    return validate


class DatabaseIn(RequestBody):
    model_config = LOOKAHEAD
    # Each field reaches libpq as itself only (tidemark_contracts.connection): a TCP host
    # (a Unix-socket directory would reach the runner's own local servers), and names that
    # libpq cannot read as a connection string or URI overriding the other fields.
    host: Annotated[str, Field(min_length=1, max_length=253, pattern=HOST_PATTERN)]
    port: PORT = 5432
    dbname: Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]
    user: Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]
    # Required: a missing password is an error, never a fallback to the runner's own.
    password_ref: CredentialRef

    _host = field_validator("host", mode="before")(_refused_by(host_problem))
    _names = field_validator("dbname", "user", mode="before")(_refused_by(name_problem))


class ClusterIn(RequestBody):
    data_directory: Annotated[str, Field(pattern=ABSOLUTE_PATH)]
    bin_directory: Annotated[str, Field(pattern=ABSOLUTE_PATH)]
    port: PORT


class CreateEnvironment(RequestBody):
    # filesPath's pattern needs look-ahead; its before-validator refuses control characters.
    model_config = LOOKAHEAD

    name: NAME
    database: DatabaseIn
    cluster: ClusterIn | None = None
    files_path: (
        Annotated[
            str,
            Field(
                pattern=LOCAL_PATH,
                max_length=LOCAL_PATH_MAX_CHARS,
                description=(
                    "The environment's files directory, relative to the organization's "
                    "directory under the runners' files root (`<root>/<organizationId>/`), "
                    "as a local destination's path is: absolute paths and `..` are refused. "
                    "Runners never follow a symbolic link on the way to it, and store "
                    "symbolic links inside it as links."
                ),
            ),
        ]
        | None
    ) = None

    @field_validator("files_path", mode="before")
    @classmethod
    def _files_inside_the_organization(cls, value: Any) -> Any:
        problem = local_path_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise ValueError(problem)  # the reason, never the value
        return value


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
    model_config = LOOKAHEAD
    path: Annotated[
        str,
        Field(
            min_length=1,
            max_length=LOCAL_PATH_MAX_CHARS,
            pattern=LOCAL_PATH,
            description=(
                "The destination's directory, relative to the organization's directory "
                "under the operator's destination root (`<root>/<organizationId>/<path>`): "
                "directory names separated by `/`, e.g. `backups/nightly`. Refused (422): "
                'an absolute path, a `..`, an empty or `.` component (so `""` and `.`, '
                "which would mean the organization's directory itself: a destination always "
                "has a directory of its own), a backslash, NUL or other control characters, "
                f"a name over {LOCAL_NAME_MAX_CHARS} characters; and, where the gateway shares "
                "the runners' filesystem, a path through a symbolic link. Runners refuse a "
                "symbolic link anywhere below the root whenever they write. Backups' "
                "`location`s are relative to this directory."
            ),
        ),
    ]

    @field_validator("path", mode="before")
    @classmethod
    def _inside_the_organization(cls, value: Any) -> Any:
        problem = local_path_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise ValueError(problem)  # the reason, never the value
        return value


# S3's bucket naming rules (the strictest common ones, so a name works on every
# S3-compatible store and with path-style and virtual-hosted addressing alike): 3-63
# lowercase letters, digits, '.' and '-', starting and ending with a letter or digit; the
# rest (no '..', not an IP address, AWS's reserved prefixes and suffixes) in the validator.
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_IP_LIKE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
REGION = r"^[a-z0-9][a-z0-9-]{0,62}$"
ENDPOINT_URL = rf"^https?://[^/?#@{SPACE}{CONTROL}]+(/[^?#{SPACE}{CONTROL}]*)?$"
S3_PREFIX = rf"^[^\\{CONTROL}]*$"


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid bucket name, or None; never repeats the name."""
    if not re.fullmatch(BUCKET, bucket):
        return (
            "must be 3-63 lowercase letters, digits, '.' or '-', starting and ending with "
            "a letter or digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return "must not contain '..', '.-' or '-.'"
    if _IP_LIKE.fullmatch(bucket):
        return "must not be formatted as an IP address"
    if bucket.startswith(_RESERVED_BUCKET_PREFIXES) or bucket.endswith(_RESERVED_BUCKET_SUFFIXES):
        return "must not use a prefix or suffix S3 reserves"
    return None


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` cannot be an S3 endpoint, or None; never repeats it (it may hold
    credentials someone pasted into it)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "must be an http:// or https:// URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not hold credentials; name them with accessKeyRef and secretKeyRef"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "must not have a query or a fragment"
    if port == 0:
        return "must not name port 0"
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot lead an S3 key, or None: a '.' or '..' segment, which a store
    or proxy that normalizes paths (path-style URLs put the key in the path) would resolve
    to another key, or another bucket, than the one recorded."""
    if any(segment in (".", "..") for segment in prefix.split("/")):
        return "must not contain '.' or '..' segments"
    return None


def _checked(problem: Callable[[str], str | None]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        reason = problem(value) if isinstance(value, str) else None
        if reason is not None:
            raise ValueError(reason)  # the reason, never the value
        return value

    return check


class S3ConfigIn(RequestBody):
    bucket: Annotated[
        str,
        Field(min_length=3, max_length=63, pattern=BUCKET, examples=["tidemark-backups"]),
        AfterValidator(_checked(bucket_problem)),
    ]
    prefix: Annotated[
        str,
        Field(
            max_length=512,
            pattern=S3_PREFIX,
            description="keys are `<prefix>/<environmentId>/<backupId>.<type>...`; empty "
            "and doubled slashes are dropped; no '.' or '..' segments",
        ),
        AfterValidator(_checked(prefix_problem)),
    ] = ""
    endpoint_url: (
        Annotated[
            str,
            Field(
                max_length=2048,
                pattern=ENDPOINT_URL,
                description="an S3-compatible store's http(s) URL (path-style addressing); "
                "null for AWS S3 itself",
                examples=["https://minio.example.com:9000"],
            ),
            AfterValidator(_checked(endpoint_problem)),
        ]
        | None
    ) = None
    region: Annotated[str, Field(max_length=63, pattern=REGION, examples=["us-east-1"])] | None = (
        None
    )
    # Both required: a runner never writes with credentials of its own.
    access_key_ref: CredentialRef
    secret_key_ref: CredentialRef


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


# --- secrets --------------------------------------------------------------------------

SecretName = Annotated[
    str,
    Field(
        pattern=rf"^{SECRET_NAME}$",
        description="letters, digits, '_', '.', '-'; named elsewhere as secret:NAME",
    ),
]
SecretValue = Annotated[str, Field(min_length=1, max_length=65536)]


class CreateSecret(RequestBody):
    name: SecretName
    value: SecretValue


class ReplaceSecret(RequestBody):
    value: SecretValue


class SecretOut(ResponseBody):
    """A stored secret as the API shows it: its name and dates, never its value."""

    name: str
    created_at: UtcDatetime
    updated_at: UtcDatetime


# --- backups --------------------------------------------------------------------------


class CreateBackup(RequestBody):
    type: BackupType
    label: Annotated[str, Field(max_length=200, pattern=PRINTABLE)] | None = None
    destination_ids: (
        Annotated[
            list[uuid.UUID],
            Field(
                min_length=1,
                max_length=10,
                description="where to store it; without it (and without destinationId): the "
                "schedule's destinations, else the organization's default ones, else 422",
            ),
        ]
        | None
    ) = None
    destination_id: Annotated[
        uuid.UUID | None,
        Field(
            description="the source document's shorthand for destinationIds: [id]; "
            "giving both is 422"
        ),
    ] = None

    @model_validator(mode="after")
    def _one_way_to_name_destinations(self) -> CreateBackup:
        if self.destination_id is not None and self.destination_ids is not None:
            raise ValueError("give destinationIds or destinationId, not both")
        return self

    @property
    def requested_destinations(self) -> list[uuid.UUID] | None:
        """The destinations named either way; None when the request names none."""
        if self.destination_id is not None:
            return [self.destination_id]
        return self.destination_ids


class BackupDestinationOut(ResponseBody):
    destination_id: uuid.UUID
    name: str
    type: str
    status: Literal["pending", "uploaded", "failed", "deleted"]
    location: Annotated[
        str | None,
        Field(
            description=(
                "where the artifact is, relative to the destination (for a `local` one, to "
                "its `config.path`): `<environmentId>/<backupId>.<type>.pgdump.zst`"
            )
        ),
    ] = None
    size_bytes: int | None = None
    uploaded_at: UtcDatetime | None = None
    error: Annotated[
        str | None,
        Field(description="why this destination failed (status `failed`), else null"),
    ] = None


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


# --- schedules ------------------------------------------------------------------------

# A count or window beyond these is no policy anyone means (and a window of more days
# than a timedelta holds would fail the arithmetic).
MAX_RETENTION_COUNT = 1_000_000
MAX_RETENTION_DAYS = 100_000

Count = Annotated[int, Field(ge=0, le=MAX_RETENTION_COUNT), BeforeValidator(json_number)] | None
Days = Annotated[int, Field(ge=0, le=MAX_RETENTION_DAYS), BeforeValidator(json_number)] | None
Frequency = Literal["hourly", "daily", "weekly", "monthly", "custom", "none"]
Cron = Annotated[
    str,
    Field(
        max_length=200,
        pattern=PRINTABLE,
        description="5-field cron (minute hour day-of-month month day-of-week), in the "
        "schedule's timezone; required with frequency custom, else the preset's or absent",
        examples=["30 1 * * *"],
    ),
]


class RetentionIn(RequestBody):
    """The retention fields of a schedule (API.md "Retention semantics"): counts of
    periods to keep (a per-type count overrides the general one) and windows in days."""

    retain_hourly: Count = None
    retain_daily: Count = None
    retain_weekly: Count = None
    retain_monthly: Count = None
    retain_db_hourly: Count = None
    retain_db_daily: Count = None
    retain_db_weekly: Count = None
    retain_db_monthly: Count = None
    retain_full_hourly: Count = None
    retain_full_daily: Count = None
    retain_full_weekly: Count = None
    retain_full_monthly: Count = None
    retain_hourly_days: Days = None
    retain_daily_days: Days = None
    retain_weekly_days: Days = None
    retain_monthly_days: Days = None


class ScheduleIn(RetentionIn):
    """An environment's backup schedule (API.md "Schedule body"). Unknown fields are 422."""

    enabled: BOOLEAN = True
    paused: BOOLEAN = False
    timezone: Annotated[
        str,
        Field(
            max_length=64,
            pattern=PRINTABLE,
            description="IANA time zone the crons and retention periods are read in",
            examples=["Europe/Berlin"],
        ),
    ] = "UTC"
    db_frequency: Frequency = "daily"
    full_frequency: Frequency = "none"
    db_cron: Cron | None = None
    full_cron: Cron | None = None
    destination_ids: Annotated[
        list[uuid.UUID],
        Field(min_length=1, max_length=10, description="where its backups go, in this order"),
    ]
    wal_enabled: BOOLEAN = False
    wal_retention_days: (
        Annotated[
            int,
            Field(ge=1, le=35, description="1-35; 7 when WAL is on and it is absent"),
            BeforeValidator(json_number),
        ]
        | None
    ) = None


class ScheduleOut(ResponseBody):
    enabled: bool
    paused: bool
    timezone: str
    db_frequency: Frequency
    full_frequency: Frequency
    db_cron: str | None = Field(description="the effective cron: the preset's, or custom's")
    full_cron: str | None
    destination_ids: list[uuid.UUID]
    wal_enabled: bool
    wal_retention_days: int | None
    retain_hourly: int | None
    retain_daily: int | None
    retain_weekly: int | None
    retain_monthly: int | None
    retain_db_hourly: int | None
    retain_db_daily: int | None
    retain_db_weekly: int | None
    retain_db_monthly: int | None
    retain_full_hourly: int | None
    retain_full_daily: int | None
    retain_full_weekly: int | None
    retain_full_monthly: int | None
    retain_hourly_days: int | None
    retain_daily_days: int | None
    retain_weekly_days: int | None
    retain_monthly_days: int | None
    environment_id: uuid.UUID
    created_at: UtcDatetime
    updated_at: UtcDatetime
    next_db_backup_at: UtcDatetime | None = Field(
        description="null when the schedule is disabled or paused, or dbFrequency is none"
    )
    next_full_backup_at: UtcDatetime | None = Field(
        description="null when the schedule is disabled or paused, or fullFrequency is none"
    )


class CronPresetOut(ResponseBody):
    id: str
    label: str
    cron: str
    frequency: Frequency


class KeptBackupOut(ResponseBody):
    backup_id: uuid.UUID
    created_at: UtcDatetime
    type: BackupType
    reasons: list[str] = Field(description="every rule that keeps it")


class DeletedBackupOut(ResponseBody):
    backup_id: uuid.UUID
    created_at: UtcDatetime
    type: BackupType
    rule: str = Field(description="the rule that no longer keeps it")


class RetentionSummaryOut(ResponseBody):
    keep: int
    delete: int
    freed_bytes: int = Field(description="the sizes of the backups it would delete, summed")


class RetentionPreviewOut(ResponseBody):
    """What retention with these settings would keep and delete now (newest first)."""

    keep: list[KeptBackupOut]
    delete: list[DeletedBackupOut]
    summary: RetentionSummaryOut


class PitrWindowOut(ResponseBody):
    start: UtcDatetime
    end: UtcDatetime


class PitrOut(ResponseBody):
    """An environment's point-in-time recovery coverage (API.md)."""

    wal_enabled: bool
    wal_archiving_status: Annotated[
        Literal["active", "stalled", "disabled"],
        Field(
            description="`disabled` while the schedule has WAL off (or there is no schedule), "
            "and until the backup-runner has started archiving"
        ),
    ]
    coverage_start: Annotated[
        UtcDatetime | None,
        Field(description="start of the window reaching the latest time; null when none"),
    ]
    coverage_end: UtcDatetime | None
    last_archived_at: UtcDatetime | None
    lag_seconds: Annotated[
        float | None, Field(description="now minus lastArchivedAt; null when never archived")
    ]
    wal_retention_days: int | None
    windows: Annotated[
        list[PitrWindowOut],
        Field(
            description="every reachable window, oldest first (a gap in the archived WAL, or "
            "a timeline change, splits them); the last one is coverageStart…coverageEnd"
        ),
    ]


class CreateRestore(RequestBody):
    target_type: Annotated[
        Literal["same", "other", "new"],
        Field(
            description="`same`: the backup's own environment; `other`: "
            "`targetEnvironmentId` of the caller's organization; `new`: 422 (disabled until "
            "environment provisioning exists)"
        ),
    ]
    target_environment_id: uuid.UUID | None = None
    new_environment_name: Annotated[str, Field(max_length=200)] | None = None
    pitr_timestamp: Annotated[
        UtcDatetime | None,
        Field(
            description="restore to this time (with a zone); valid only inside the backup "
            "environment's PITR coverage (422 otherwise, with the coverage in `detail`); "
            "the restore then uses the newest `full` backup before it plus archived WAL"
        ),
    ] = None
    backup_id: Annotated[
        uuid.UUID | None,
        Field(description="the source document's repetition of the path's id; must equal it"),
    ] = None
    create_safety_backup: Annotated[
        BOOLEAN,
        Field(
            description="first take a backup of the target (`safetyBackupId`), so the "
            "restore can itself be undone; needs a destination for it (the target's "
            "schedule's, else the organization's defaults, else 422)"
        ),
    ] = True


class RestoreOut(ResponseBody):
    id: uuid.UUID
    backup_id: uuid.UUID
    base_backup_id: Annotated[
        uuid.UUID,
        Field(description="the backup laid down: `backupId`, or the PITR base `full` backup"),
    ]
    restore_type: BackupType
    source_environment_id: uuid.UUID
    target_environment_id: uuid.UUID
    target_type: Literal["same", "other", "new"]
    pitr_timestamp: UtcDatetime | None
    safety_backup_id: uuid.UUID | None
    status: Literal["pending", "running", "completed", "failed"]
    requested_by: str
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    completed_at: UtcDatetime | None
    duration_ms: int | None
    error: str | None


# --- alerts ---------------------------------------------------------------------------


class AlertOut(ResponseBody):
    """One alert: an episode of a condition (a failing environment's backups, a destination
    that cannot be reached, ...), raised once, repeated while open, resolved by a later
    success of the same kind on the same subject (it stays listed, with ``resolvedAt``)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    project_id: uuid.UUID | None
    environment_id: uuid.UUID | None
    backup_id: uuid.UUID | None
    restore_id: uuid.UUID | None
    destination_id: uuid.UUID | None
    kind: Annotated[str, Field(examples=list(ALERT_KINDS))]
    severity: AlertSeverity
    title: str
    message: str
    occurrences: int
    created_at: UtcDatetime
    last_seen_at: UtcDatetime
    read_at: UtcDatetime | None
    dismissed_at: UtcDatetime | None
    resolved_at: UtcDatetime | None


class AlertCountOut(ResponseBody):
    count: Annotated[int, Field(description="alerts neither read nor dismissed")]
    unread: Annotated[int, Field(description="alerts not read (dismissed or not)")]
    undismissed: Annotated[int, Field(description="alerts not dismissed (read or not)")]


# --- webhooks -------------------------------------------------------------------------


def _distinct(kinds: list[str]) -> list[str]:
    if len(set(kinds)) != len(kinds):
        raise ValueError("kinds must not repeat a kind")
    return kinds


class CreateWebhook(RequestBody):
    url: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_URL_LENGTH,
            description="where alert changes are POSTed: https (plain http only to hosts the "
            "operator allows); never a private, loopback, link-local or reserved address, "
            "no credentials, no fragment",
            examples=["https://hooks.example.com/tidemark"],
        ),
    ]
    signing_secret_ref: CredentialRef
    kinds: Annotated[
        list[AlertKind],
        Field(
            max_length=len(ALERT_KINDS),
            description="the alert kinds delivered; empty or absent: every kind",
            json_schema_extra={"uniqueItems": True},
        ),
        AfterValidator(_distinct),
    ] = Field(default_factory=list)


class WebhookOut(ResponseBody):
    id: uuid.UUID
    organization_id: uuid.UUID
    url: str
    signing_secret_ref: str
    kinds: Annotated[list[str], Field(description="empty: every kind")]
    created_at: UtcDatetime


class WebhookDeliveryOut(ResponseBody):
    """One attempt at delivering an alert change to the webhook."""

    id: Annotated[
        uuid.UUID,
        Field(
            description="the delivery's id, the same for every attempt at one change (the "
            "Tidemark-Delivery header the receiver got)"
        ),
    ]
    alert_id: uuid.UUID
    event: Annotated[str, Field(description="the change delivered, e.g. alert.raised")]
    attempt: int
    status: DeliveryStatus
    response_status: int | None
    error: str | None
    at: UtcDatetime
    next_attempt_at: Annotated[
        UtcDatetime | None, Field(description="when the next attempt is due (`retrying`)")
    ]
