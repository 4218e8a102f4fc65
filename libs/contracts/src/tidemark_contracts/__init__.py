"""Tidemark's public message contracts: commands, domain events, progress, topics."""

from tidemark_contracts.base import Message, UtcDatetime, WireModel, format_utc, utc_now
from tidemark_contracts.envelope import Envelope, event_message_id
from tidemark_contracts.topics import (
    ALL_TOPICS,
    BACKUP_COMMANDS,
    BACKUP_EVENTS,
    BACKUP_PROGRESS,
    CATALOG_EVENTS,
    DEAD_LETTER_TOPICS,
    SCHEDULE_COMMANDS,
    SCHEDULE_EVENTS,
    SERVICE_HEARTBEATS,
    Topic,
    all_messages,
    dlq_topic,
)

__all__ = [
    "ALL_TOPICS",
    "BACKUP_COMMANDS",
    "BACKUP_EVENTS",
    "BACKUP_PROGRESS",
    "CATALOG_EVENTS",
    "DEAD_LETTER_TOPICS",
    "SCHEDULE_COMMANDS",
    "SCHEDULE_EVENTS",
    "SERVICE_HEARTBEATS",
    "Envelope",
    "Message",
    "Topic",
    "UtcDatetime",
    "WireModel",
    "all_messages",
    "dlq_topic",
    "event_message_id",
    "format_utc",
    "utc_now",
]
