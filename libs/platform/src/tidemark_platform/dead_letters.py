"""Dead letters: records that can never be handled, parked on ``<topic>.dlq`` with the reason.

A parked record keeps the original key, value and headers byte for byte, and gains
``dlq.*`` headers: why (``dlq.reason``, ``dlq.error``), who (``dlq.service``,
``dlq.group``), how often it was tried (``dlq.attempts``) and where it came from
(``dlq.original-topic``, ``-partition``, ``-offset``; a relay entry that never reached its
topic has ``dlq.relay`` and ``dlq.relay-position`` instead). The error text is the
exception's type and message, or for a validation error the failing fields and rules,
never the input: a payload may hold what must not be logged.

Operators list parked records and re-drive them (``tidemark-dev dlq``). A re-drive
publishes the original key, value and headers back to the original topic and records
what it re-drove in a consumer group of its own (``tidemark-dlq-redrive.<dlq topic>``):
the committed offset says "everything before was re-driven", the commit's metadata lists
single offsets re-driven beyond it. A second re-drive of the same records does nothing.
Consumers are idempotent, so a re-drive interrupted between publishing and recording
at worst delivers a record twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Counter
from pydantic import ValidationError
from tidemark_contracts import utc_now
from tidemark_contracts.topics import DLQ_SUFFIX

Headers = list[tuple[str, bytes]]

HEADER_PREFIX = "dlq."
REASON = "dlq.reason"
ERROR = "dlq.error"
SERVICE = "dlq.service"
GROUP = "dlq.group"
ATTEMPTS = "dlq.attempts"
ORIGINAL_TOPIC = "dlq.original-topic"
ORIGINAL_PARTITION = "dlq.original-partition"
ORIGINAL_OFFSET = "dlq.original-offset"
RELAY = "dlq.relay"
RELAY_POSITION = "dlq.relay-position"
PARKED_AT = "dlq.parked-at"
VALUE_OMITTED = "dlq.value-omitted"

MAX_ERROR_CHARS = 500
# The redrive group's commit metadata lists offsets re-driven one by one; Kafka keeps at
# most offset.metadata.max.bytes (4096 by default) of it.
MAX_METADATA_CHARS = 4000


class Reason(StrEnum):
    UNDECODABLE = "undecodable"  # not an envelope (not JSON, or not the envelope's shape)
    UNKNOWN_TYPE = "unknown_type"  # an envelope of a type its topic does not carry
    INVALID_PAYLOAD = "invalid_payload"  # the payload fails its message's validation
    HANDLER_FAILED = "handler_failed"  # the handler raised on every attempt
    REFUSED_BY_KAFKA = "refused_by_kafka"  # a relay entry Kafka will not accept


DEAD_LETTERS = Counter(
    "tidemark_dead_letters_total",
    "Records parked on a dead-letter topic, by original topic, service and reason",
    ["topic", "service", "reason"],
)

_SECRET_PATTERNS = (
    # key=value, key: value or "key": "value" for anything that names a secret
    re.compile(
        r"(?i)\b([\w-]*(?:password|passwd|secret|token|authorization)[\w-]*)"
        r"([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;}]+)"
    ),
    # credentials inside a URL: scheme://user:password@host
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)([^@\s]+)(@)"),
)


def _redact(text: str) -> str:
    text = _SECRET_PATTERNS[0].sub(r"\1\2[redacted]", text)
    return _SECRET_PATTERNS[1].sub(r"\1[redacted]\3", text)


def describe_error(error: BaseException | str) -> str:
    """A short, loggable account of ``error`` that never repeats the input it rejected."""
    if isinstance(error, str):
        text = error
    elif isinstance(error, ValidationError):
        problems = error.errors(include_url=False, include_input=False, include_context=False)
        text = f"{error.title}: " + "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or '<root>'}: {problem['msg']}"
            for problem in problems
        )
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    text = _redact(text)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def dead_letter_headers(
    original: Iterable[tuple[str, bytes]],
    *,
    reason: Reason,
    error: str,
    service: str,
    attempts: int,
    original_topic: str,
    original_partition: int | None = None,
    original_offset: int | None = None,
    group: str | None = None,
    extra: dict[str, str] | None = None,
) -> Headers:
    """The original headers (minus any earlier ``dlq.*`` ones) and the parking headers."""
    headers: Headers = [(k, v) for k, v in original if not k.startswith(HEADER_PREFIX)]
    added: dict[str, str | int | None] = {
        REASON: reason.value,
        ERROR: error,
        SERVICE: service,
        GROUP: group,
        ATTEMPTS: attempts,
        ORIGINAL_TOPIC: original_topic,
        ORIGINAL_PARTITION: original_partition,
        ORIGINAL_OFFSET: original_offset,
        PARKED_AT: utc_now().isoformat(),
        **(extra or {}),
    }
    headers += [(k, str(v).encode()) for k, v in added.items() if v is not None]
    return headers


def dlq_name(topic: str) -> str:
    """``backup.commands`` and ``backup.commands.dlq`` both name ``backup.commands.dlq``."""
    return topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX


def redrive_group(dlq_topic: str) -> str:
    return f"tidemark-dlq-redrive.{dlq_topic}"


# ----------------------------------------------------------------------------------------
# Operators: list and re-drive parked records.


@dataclass(frozen=True)
class ParkedRecord:
    dlq_topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    redriven: bool = False

    def header(self, name: str) -> str | None:
        for key, value in reversed(self.headers):
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def original_topic(self) -> str:
        return self.header(ORIGINAL_TOPIC) or self.dlq_topic.removesuffix(DLQ_SUFFIX)

    @property
    def original_headers(self) -> Headers:
        return [(k, v) for k, v in self.headers if not k.startswith(HEADER_PREFIX)]

    def summary(self) -> dict[str, object]:
        """What ``dlq list`` shows: everything but the value, which may hold secrets."""
        return {
            "dlqTopic": self.dlq_topic,
            "offset": self.offset,
            "redriven": self.redriven,
            "originalTopic": self.original_topic,
            "originalPartition": self.header(ORIGINAL_PARTITION),
            "originalOffset": self.header(ORIGINAL_OFFSET),
            "relayPosition": self.header(RELAY_POSITION),
            "reason": self.header(REASON),
            "service": self.header(SERVICE),
            "group": self.header(GROUP),
            "attempts": self.header(ATTEMPTS),
            "parkedAt": self.header(PARKED_AT),
            "error": self.header(ERROR),
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "valueBytes": len(self.value) if self.value is not None else 0,
        }


@dataclass
class RedriveState:
    """What was re-driven: every offset below ``committed``, and ``beyond``."""

    committed: int
    beyond: set[int]

    def done(self, offset: int) -> bool:
        return offset < self.committed or offset in self.beyond

    def mark(self, offset: int) -> None:
        self.beyond.add(offset)
        while self.committed in self.beyond:
            self.beyond.discard(self.committed)
            self.committed += 1

    def metadata(self) -> str:
        text = json.dumps(sorted(self.beyond), separators=(",", ":"))
        if len(text) > MAX_METADATA_CHARS:
            raise ValueError(
                "too many records re-driven out of order to record; re-drive with --all"
            )
        return text

    @classmethod
    def from_commit(cls, committed: OffsetAndMetadata | None) -> RedriveState:
        if committed is None or committed.offset < 0:
            return cls(0, set())
        beyond = set(json.loads(committed.metadata)) if committed.metadata else set()
        return cls(committed.offset, {int(o) for o in beyond})


class _DeadLetterReader:
    """A consumer of one dead-letter topic in its redrive group, without subscribing (no
    rebalance): it reads by assignment and commits explicitly."""

    def __init__(self, bootstrap_servers: str, dlq_topic: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.dlq_topic = dlq_topic
        self.partition = TopicPartition(dlq_topic, 0)

    async def __aenter__(self) -> _DeadLetterReader:
        # The admin client answers with the commit's metadata (the consumer does not).
        self.admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, client_id="tidemark-dlq"
        )
        await self.admin.start()
        try:
            # All topics, not this one by name: naming a missing topic auto-creates it.
            described = {t["topic"]: t for t in await self.admin.describe_topics()}
            topic = described.get(self.dlq_topic)
            if topic is None:
                raise LookupError(f"no dead-letter topic {self.dlq_topic}")
            if len(topic["partitions"]) != 1:
                # Offsets name records only within one partition; ours are made with one.
                raise ValueError(
                    f"{self.dlq_topic} has {len(topic['partitions'])} partitions; dead-letter "
                    "topics are created with one and re-driven by its offsets"
                )
            self.consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=redrive_group(self.dlq_topic),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id="tidemark-dlq",
            )
            await self.consumer.start()
        except BaseException:
            await self.admin.close()
            raise
        self.consumer.assign([self.partition])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def state(self) -> RedriveState:
        committed = await self.admin.list_consumer_group_offsets(
            redrive_group(self.dlq_topic), partitions=[self.partition]
        )
        return RedriveState.from_commit(committed.get(self.partition))

    async def records(self) -> list[ParkedRecord]:
        """Every record the topic holds now (up to its end when asked)."""
        end = (await self.consumer.end_offsets([self.partition]))[self.partition]
        start = (await self.consumer.beginning_offsets([self.partition]))[self.partition]
        if end <= start:
            return []
        self.consumer.seek(self.partition, start)
        records: list[ParkedRecord] = []
        while not records or records[-1].offset < end - 1:
            batch = await self.consumer.getmany(self.partition, timeout_ms=1000, max_records=500)
            for record in batch.get(self.partition, []):
                if record.offset >= end:
                    break
                records.append(
                    ParkedRecord(
                        dlq_topic=self.dlq_topic,
                        partition=record.partition,
                        offset=record.offset,
                        timestamp_ms=record.timestamp,
                        key=record.key,
                        value=record.value,
                        headers=tuple(record.headers),
                    )
                )
        return records

    async def commit(self, state: RedriveState) -> None:
        await self.consumer.commit(
            {self.partition: OffsetAndMetadata(state.committed, state.metadata())}
        )


async def list_parked(bootstrap_servers: str, dlq_topic: str) -> list[ParkedRecord]:
    """The records parked on ``dlq_topic``, each marked whether it was re-driven."""
    async with _DeadLetterReader(bootstrap_servers, dlq_topic) as reader:
        state = await reader.state()
        return [
            replace(record, redriven=state.done(record.offset)) for record in await reader.records()
        ]


async def dead_letter_topics(bootstrap_servers: str) -> list[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, client_id="tidemark-dlq")
    await consumer.start()
    try:
        return sorted(t for t in await consumer.topics() if t.endswith(DLQ_SUFFIX))
    finally:
        await consumer.stop()


async def redrive(
    bootstrap_servers: str, dlq_topic: str, offsets: Sequence[int] | None = None
) -> list[ParkedRecord]:
    """Publish parked records back to their original topics; returns those re-driven.

    ``offsets`` None re-drives every record not re-driven before; otherwise only those
    offsets (each at most once, ever). Unknown offsets raise ``LookupError``.
    """
    async with _DeadLetterReader(bootstrap_servers, dlq_topic) as reader:
        state = await reader.state()
        records = await reader.records()
        if offsets is not None:
            by_offset = {record.offset: record for record in records}
            unknown = sorted(set(offsets) - set(by_offset))
            if unknown:
                raise LookupError(f"{dlq_topic} has no record at offset(s) {unknown}")
            records = [by_offset[offset] for offset in sorted(set(offsets))]
        todo = [record for record in records if not state.done(record.offset)]
        if not todo:
            return []
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            client_id="tidemark-dlq-redrive",
        )
        await producer.start()
        try:
            for record in todo:
                if record.header(VALUE_OMITTED) is not None:
                    raise ValueError(
                        f"{dlq_topic} offset {record.offset} was parked without its value "
                        "(too large even for the dead-letter topic); it cannot be re-driven"
                    )
                await producer.send_and_wait(
                    record.original_topic,
                    record.value,
                    key=record.key,
                    headers=record.original_headers,
                )
                state.mark(record.offset)
                await reader.commit(state)
        finally:
            await producer.stop()
        return todo
