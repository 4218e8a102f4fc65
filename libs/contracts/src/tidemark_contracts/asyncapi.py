"""The AsyncAPI 3.0 document of every topic and message, generated from the registry.

Handlers take raw envelopes (the payload's type is chosen by ``messageType``), so the
document is built from the registries and the pydantic models, not from handlers: the
channels and messages from the topics, the operations (who sends, who receives) from the
services' descriptions.
Regenerate with ``make schemas``; a test keeps the committed copy current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tidemark_contracts.envelope import Envelope
from tidemark_contracts.services import SERVICES
from tidemark_contracts.topics import ALL_TOPICS, Topic

DOCUMENT = Path(__file__).resolve().parents[2] / "asyncapi.json"
REF = "#/components/schemas/{model}"


def _message_key(message_type: str, version: int) -> str:
    return f"{message_type}.v{version}".replace(".", "_")


def _channel_id(topic: Topic) -> str:
    return topic.name.replace(".", "_")


def _operations(channels: dict[str, Any]) -> dict[str, Any]:
    """One operation per service and topic it sends to (``produces``) or receives from."""
    operations: dict[str, Any] = {}
    for service in SERVICES:
        for action, topics in (("send", service.produces), ("receive", service.consumes)):
            for topic in topics:
                channel_id = _channel_id(topic)
                operation_id = f"{service.name.replace('-', '_')}_{action}_{channel_id}"
                operations[operation_id] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{channel_id}"},
                    "title": f"{service.name} {action}s {topic.name}",
                    "summary": service.description,
                    "tags": [{"name": service.name}],
                    "messages": [
                        {"$ref": f"#/channels/{channel_id}/messages/{key}"}
                        for key in channels[channel_id]["messages"]
                    ],
                }
    return operations


def build() -> dict[str, Any]:
    models: list[type[BaseModel]] = [Envelope]
    models += [m for topic in ALL_TOPICS for m in topic.messages]
    _, definitions = models_json_schema(
        [(model, "serialization") for model in models], by_alias=True, ref_template=REF
    )
    schemas: dict[str, Any] = definitions.get("$defs", {})
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in ALL_TOPICS:
        channel_messages = {}
        for message in topic.messages:
            version = message.model_fields["version"].default
            key = _message_key(message.message_type, version)
            messages[key] = {
                "name": message.message_type,
                "title": f"{message.message_type} v{version}",
                "summary": (message.__doc__ or "").strip().splitlines()[0]
                if message.__doc__
                else message.message_type,
                "contentType": "application/json",
                "payload": {
                    "allOf": [
                        {"$ref": REF.format(model="Envelope")},
                        {
                            "type": "object",
                            "properties": {
                                "messageType": {"const": message.message_type},
                                "messageVersion": {"const": version},
                                "payload": {"$ref": REF.format(model=message.__name__)},
                            },
                        },
                    ]
                },
            }
            channel_messages[key] = {"$ref": f"#/components/messages/{key}"}
        channel_id = _channel_id(topic)
        channels[channel_id] = {
            "address": topic.name,
            "description": f"{topic.description} Keyed by {topic.key}; "
            f"{topic.partitions} partition(s).",
            "messages": channel_messages,
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Tidemark messages",
            "version": "1.0.0",
            "description": "Commands, domain events and progress on Kafka. Every message "
            "travels in an Envelope; messages change only compatibly (optional fields "
            "added), an incompatible change is a new message type.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": _operations(channels),
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    DOCUMENT.write_text(render())
    print(DOCUMENT)
